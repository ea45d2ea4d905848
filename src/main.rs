//! Entry point; everything lives in the library, whose `main` maps every failure to its exit code.

fn main() -> std::process::ExitCode {
    sendsms_whitelister::main()
}
