//! `coffer client ...`: the admin bundle for other clients. `docker-env` lays it out as the
//! docker CLI expects it (`ca.pem`, `cert.pem`, `key.pem` in one directory) and prints the
//! environment that points docker at a manager.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::cli::exit::CliError;
use crate::cli::ClientOpts;

#[derive(Subcommand, Debug)]
pub(crate) enum ClientCmd {
    /// Print `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for the docker CLI
    /// (use: eval "$(coffer client docker-env)"). The bundle's files are linked, not copied,
    /// into `<client-dir>/docker`.
    DockerEnv,
}

pub(crate) fn client(cmd: ClientCmd, opts: &ClientOpts) -> Result<(), CliError> {
    match cmd {
        ClientCmd::DockerEnv => {
            let dir = opts.client_dir().ok_or_else(|| {
                CliError::Local("no client bundle: pass --client-dir or set COFFER_CLIENT_DIR".into())
            })?;
            let docker = docker_dir(&dir).map_err(CliError::Local)?;
            println!("export DOCKER_HOST={}", quote(&format!("tcp://{}", opts.addr)));
            println!("export DOCKER_TLS_VERIFY=1");
            println!("export DOCKER_CERT_PATH={}", quote(&docker.display().to_string()));
            println!("# Run this command to configure your shell:");
            println!("# eval \"$(coffer client docker-env)\"");
            Ok(())
        }
    }
}

/// `<bundle>/docker` with `ca.pem`, `cert.pem` and `key.pem` linked to the bundle's files:
/// the key stays in one file, with the bundle's mode.
fn docker_dir(bundle: &Path) -> Result<PathBuf, String> {
    let bundle = bundle.canonicalize().map_err(|e| format!("{}: {e}", bundle.display()))?;
    for f in ["ca.pem", "client.pem", "client.key"] {
        if !bundle.join(f).is_file() {
            return Err(format!("{} has no {f}: is it a client bundle?", bundle.display()));
        }
    }
    let dir = bundle.join("docker");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for (link, target) in [("ca.pem", "ca.pem"), ("cert.pem", "client.pem"), ("key.pem", "client.key")] {
        let path = dir.join(link);
        let want = Path::new("..").join(target);
        if std::fs::read_link(&path).is_ok_and(|t| t == want) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&want, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(dir)
}

/// Single-quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_dir_links_the_bundle_and_refuses_a_directory_that_is_not_one() {
        let root = tempfile::TempDir::new().expect("tempdir");
        assert!(docker_dir(root.path()).is_err());
        for (f, body) in [("ca.pem", "CA"), ("client.pem", "CERT"), ("client.key", "KEY")] {
            std::fs::write(root.path().join(f), body).expect("write");
        }
        let dir = docker_dir(root.path()).expect("laid out");
        let again = docker_dir(root.path()).expect("again");
        assert_eq!(dir, again);
        for (f, body) in [("ca.pem", "CA"), ("cert.pem", "CERT"), ("key.pem", "KEY")] {
            assert_eq!(std::fs::read_to_string(dir.join(f)).expect("read"), body);
            assert!(std::fs::symlink_metadata(dir.join(f)).expect("stat").file_type().is_symlink(), "{f} is copied");
        }
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
