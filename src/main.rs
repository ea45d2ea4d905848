//! Entry point; everything lives in the library so tests and the demo share it.

fn main() -> std::process::ExitCode {
    sendsms_whitelister::cli::main()
}
