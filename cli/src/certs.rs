//! `ringfs certs`: a cluster CA and the certificates it signs, as TLS directories
//! (`ca.crt`, `tls.crt`, `tls.key`) ready for `--tls-dir` or a kubernetes.io/tls Secret.

use anyhow::{Context, Result};
use clap::Subcommand;
use ringfs_tls::issue::{CertAuthority, IssueOptions};
use ringfs_tls::{Role, TlsMaterial};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

const DAY: u64 = 24 * 3600;

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a self-signed cluster CA: `ca.crt` and `ca.key` (keep ca.key secret).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Name in the CA's subject (e.g. the cluster name).
        #[arg(long, default_value = "ringfs")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA into a TLS directory (ca.crt, tls.crt, tls.key).
    Issue {
        /// The CA directory made by `ringfs certs ca`.
        #[arg(long)]
        ca: PathBuf,
        /// node (storage nodes: everything), admin (cluster and volume administration)
        /// or client (mounts and file I/O).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Common name of the holder (e.g. node-1, csi, alice).
        #[arg(long)]
        name: String,
        /// DNS names the holder is reached by (nodes: every name peers and clients dial).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// IP addresses the holder is reached by.
        #[arg(long, value_delimiter = ',')]
        ip: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Check a TLS directory and show its role and expiry.
    Show { dir: PathBuf },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).map_err(|e| e.to_string())
}

fn days_left(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::now())
        .map(|d| d.as_secs() / DAY)
        .unwrap_or(0)
}

pub fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Ca {
            out,
            name,
            days,
            force,
        } => {
            let ca = CertAuthority::generate(&name, Duration::from_secs(days * DAY))?;
            ca.write_dir(&out, force)?;
            println!(
                "wrote CA {name:?} to {} (ca.crt, ca.key; valid {days} days)",
                out.display()
            );
        }
        CertsCmd::Issue {
            ca,
            role,
            name,
            dns,
            ip,
            days,
            out,
            force,
        } => {
            if role == Role::Node && dns.is_empty() && ip.is_empty() {
                anyhow::bail!(
                    "a node certificate needs the names or addresses peers and clients dial it by: pass --dns and/or --ip"
                );
            }
            let ca = CertAuthority::load(&ca)?;
            let opts = IssueOptions::new(role, &name)
                .dns(dns)
                .ips(ip)
                .validity(Duration::from_secs(days * DAY));
            ca.issue(&opts)?.write_dir(&out, force)?;
            // What was written must load: catches anything the issuing side let through.
            TlsMaterial::load(&out).context("checking the written certificate")?;
            println!(
                "wrote a {role} certificate for {name:?} to {} (ca.crt, tls.crt, tls.key; valid {days} days)",
                out.display()
            );
        }
        CertsCmd::Show { dir } => {
            let m = TlsMaterial::load(&dir)?;
            println!(
                "{}: role {}, expires in {} days; certificate chains to ca.crt and matches tls.key",
                dir.display(),
                m.role.map(|r| r.as_str()).unwrap_or("(none)"),
                days_left(m.not_after)
            );
        }
    }
    Ok(())
}
