use std::process::ExitCode;

fn main() -> ExitCode {
    // Reads FAILPOINTS; a build without the feature has no failpoints.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match std::env::var("CNI_COMMAND") {
        Ok(command) => {
            ratchet_plugin::keep_files_private();
            ratchet_plugin::cni::run(&command)
        }
        Err(_) => match ratchet_plugin::cli::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ratchet: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}
