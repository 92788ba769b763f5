fn main() -> std::process::ExitCode {
    imagegate::cli::main()
}
