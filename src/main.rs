//! The `tollgate` binary; see `tollgate --help`.

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
