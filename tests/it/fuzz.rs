//! Bounded fuzzing of the parsers that take hostile input
//! (`lessor::fuzz::TARGETS`: JWT, CSR, PostgreSQL templates, Cedar context,
//! config) on the stable toolchain: a seeded mutator (bit flips, byte
//! edits, dictionary splices, crossover) over each target's seed corpus,
//! asserting that no input panics. Deterministic by default (fixed seed,
//! fixed iteration counts, about a minute for all targets in a debug
//! build). A long run: `LESSOR_FUZZ_SECONDS=3600 cargo test --release --test it fuzz`
//! runs each target for that many seconds from a random seed (printed, and
//! `LESSOR_FUZZ_SEED` replays it).

use std::time::{Duration, Instant};

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const MAX_LEN: usize = 8 * 1024;

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&str]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            4 | 5 if !dict.is_empty() => {
                let w = dict[rng.below(dict.len())].as_bytes();
                let i = rng.below(len + 1);
                input.splice(i..i, w.iter().copied());
            }
            6 if len > 0 => {
                // Duplicate a chunk (grows nesting, repeats separators).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            7 if !pool.is_empty() => {
                // Crossover: our head, another input's tail.
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                // An interesting number in place of a byte run.
                let nums: [&[u8]; 6] = [b"0", b"-1", b"4294967296", b"9223372036854775808", b"1e309", b"NaN"];
                let i = rng.below(len);
                let n = rng.below((len - i).min(8));
                input.splice(i..i + n, nums[rng.below(nums.len())].iter().copied());
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

fn show(input: &[u8]) -> String {
    let s: String = input.iter().take(600).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    format!("b\"{s}\" ({} bytes)", input.len())
}

/// Runs `target` for `iterations` inputs (or, with `LESSOR_FUZZ_SECONDS`,
/// for that long); fails with every input that panicked.
fn run(name: &str, iterations: u64) {
    let target = lessor::fuzz::TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap();
    let seeds = lessor::fuzz::seeds(name);
    assert!(!seeds.is_empty(), "target {name} has no seeds");
    let dict = lessor::fuzz::dictionary(name);
    let long = std::env::var("LESSOR_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let seed = std::env::var("LESSOR_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        if long.is_some() {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
        } else {
            0x5eed_1e55_0f00_d001 ^ name.len() as u64
        }
    });
    let mut rng = Rng(seed);
    let mut pool = seeds.clone();
    let mut crashes = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    let check = |input: &[u8], crashes: &mut Vec<String>| {
        if std::panic::catch_unwind(|| target(input)).is_err() {
            crashes.push(show(input));
        }
    };
    for s in &seeds {
        check(s, &mut crashes);
    }
    loop {
        match long {
            Some(d) if started.elapsed() >= d => break,
            None if n >= iterations => break,
            _ => {}
        }
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &mut input, &pool, dict);
        check(&input, &mut crashes);
        // Keep some mutants so that mutations stack; the pool stays small.
        if rng.below(8) == 0 {
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let i = seeds.len() + rng.below(pool.len() - seeds.len());
                pool[i] = input;
            }
        }
        n += 1;
        if crashes.len() >= 5 {
            break;
        }
    }
    eprintln!("fuzz {name}: {n} inputs in {:.1?} (seed {seed}), {} panics", started.elapsed(), crashes.len());
    assert!(crashes.is_empty(), "fuzz {name} (seed {seed}): inputs that panic:\n{}", crashes.join("\n"));
}

#[test]
fn fuzz_jwt() {
    run("jwt", 60_000);
}

#[test]
fn fuzz_csr() {
    run("csr", 80_000);
}

#[test]
fn fuzz_pg_template() {
    run("pg_template", 400_000);
}

#[test]
fn fuzz_cedar_context() {
    run("cedar_context", 60_000);
}

#[test]
fn fuzz_config() {
    run("config", 300_000);
}
