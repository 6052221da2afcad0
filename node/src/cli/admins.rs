//! `coffer admin issue|ls|revoke`: admin credentials as named, revocable records. `issue`
//! makes the key here and sends only a CSR; it writes a client bundle (`ca.pem`,
//! `client.pem`, `client.key`) to a new directory for the operator it is for.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use coffer_api::cluster::AdminIssue;

use crate::cli::exit::CliError;
use crate::cli::output::{print_json, Format};
use crate::cli::ClientOpts;
use crate::local::data_dir::write_atomic;
use crate::trust::pki::NodeKey;

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCmd {
    /// Issue an admin credential NAME (re-issuing a name replaces its certificate: the old
    /// bundle is refused from then on), and write its bundle to a new directory.
    Issue {
        name: String,
        /// The directory to create for the bundle (ca.pem, client.pem, client.key).
        #[arg(long)]
        out: PathBuf,
        /// Validity: N followed by s, m, h or d (default 30d).
        #[arg(long, default_value = "30d")]
        ttl: String,
    },
    /// List admin credentials.
    Ls,
    /// Revoke an admin credential: refused by every manager once this returns. The last
    /// one cannot be revoked.
    Revoke { name: String },
}

/// `30d`, `12h`, `90m`, `3600s` or `3600`, in seconds.
fn parse_ttl(text: &str) -> Result<u64, CliError> {
    crate::local::config::parse_duration_secs(text).map_err(|e| CliError::Local(format!("--ttl {e}")))
}

/// Makes the bundle's directory (mode 0700), refusing one that exists: before the cluster
/// is asked, so that a re-issue never replaces a certificate whose key could not be kept.
fn make_bundle_dir(dir: &Path) -> Result<(), CliError> {
    if dir.exists() {
        return Err(CliError::Local(format!("{} exists; give a new directory for the bundle", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::Local(format!("create {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| CliError::Local(format!("{}: {e}", dir.display())))
}

fn write_bundle(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<(), CliError> {
    let local = |e: anyhow::Error| CliError::Local(format!("{}: {e:#}", dir.display()));
    write_atomic(&dir.join("ca.pem"), ca.as_bytes(), 0o644).map_err(local)?;
    write_atomic(&dir.join("client.pem"), cert.as_bytes(), 0o644).map_err(local)?;
    write_atomic(&dir.join("client.key"), key.as_bytes(), 0o600).map_err(local)
}

pub(crate) async fn admin(cmd: AdminCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    match cmd {
        AdminCmd::Issue { name, out, ttl } => {
            let ttl_secs = Some(parse_ttl(&ttl)?);
            make_bundle_dir(&out)?;
            let key = NodeKey::generate().map_err(|e| CliError::Local(e.to_string()))?;
            let csr_pem = key.csr_pem(&[]).map_err(|e| CliError::Local(e.to_string()))?;
            let issued = c.issue_admin(&AdminIssue { name, csr_pem, ttl_secs }).await?;
            write_bundle(&out, &issued.ca_pem, &issued.cert_pem, key.key_pem().expose())?;
            println!("admin credential {} issued, valid until {}", issued.name, issued.expires_at);
            println!("  bundle: {} (COFFER_CLIENT_DIR)", out.display());
        }
        AdminCmd::Ls => {
            let admins = c.admins().await?;
            if opts.format == Format::Json {
                return print_json(&admins);
            }
            println!("{:<24} {:<34} {:<26} REVOKED", "NAME", "SERIAL", "EXPIRES");
            for a in admins {
                println!("{:<24} {:<34} {:<26} {}", a.name, a.serial, a.expires_at, a.revoked);
            }
        }
        AdminCmd::Revoke { name } => {
            c.revoke_admin(&name).await?;
            println!("admin credential {name} revoked; its bundle is refused from now on");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("30d").ok(), Some(30 * 86_400));
        assert_eq!(parse_ttl("12h").ok(), Some(12 * 3600));
        assert_eq!(parse_ttl("90m").ok(), Some(5400));
        assert_eq!(parse_ttl("3600").ok(), Some(3600));
        for bad in ["", "d", "1w", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
