// The admission path allocates many small, short-lived strings per request; mimalloc serves
// them faster than the system allocator under concurrent load (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    imagegate::cli::main()
}
