//! The `lessor` binary: daemon and CLI. See `lessor --help`.

/// mimalloc, not the system allocator: glibc's malloc and free took about
/// 14% of the daemon's CPU per issued credential; with mimalloc a `token`
/// or `pki` issue costs about a fifth less CPU (README, under the engine
/// bench). Built without transparent huge pages (feature `no_thp`), which
/// otherwise cost about 19 MiB more resident memory at a million leases.
/// The benches set the same allocator (benches/support).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lessor::cli::main()
}
