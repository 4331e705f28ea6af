//! The `lessor` binary: daemon and CLI. See `lessor --help`.

fn main() -> std::process::ExitCode {
    lessor::cli::main()
}
