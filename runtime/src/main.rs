//! `fnctl`: runs a Flint node (`fnctl serve`) and manages one (`deploy`, `ls`, `rm`, ...).

fn main() -> std::process::ExitCode {
    flint_runtime::cli::main()
}
