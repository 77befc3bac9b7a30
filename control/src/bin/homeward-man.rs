//! `homeward-man DIR`: writes the man pages of the `homeward` command line
//! into DIR, generated from its clap definition: `homeward.1` and one page
//! per subcommand (`homeward-run.1`, `homeward-agent.1`, ...). The Debian
//! package ships them (`scripts/deb.sh`); this binary is not installed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: homeward-man DIR (writes homeward.1 and homeward-SUBCOMMAND.1 there)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("homeward-man: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let cmd = homeward::cli::Cli::command();
    match clap_mangen::generate_to(cmd, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "homeward-man: cannot write the man pages into {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
