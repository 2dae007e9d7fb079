//! Test certificates: a CA of the test's own, leaves it issues, and their files in a config
//! directory.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::ConfigDir;

/// A test certificate authority; leaves it issues are trusted by clients that trust it.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "porteiro test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_between(names, (2020, 1, 1), (2045, 1, 1))
    }

    /// Valid from the first date to the second, (year, month, day) in UTC.
    pub fn issue_between(
        &self,
        names: &[&str],
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
}

/// Writes `certs/NAME.pem` and `certs/NAME.key` under the config directory.
pub fn write_cert(cfg: &ConfigDir, name: &str, issued: &Issued) {
    let dir = cfg.dir.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).unwrap();
}

pub fn tls_key(name: &str) -> String {
    format!("tls = {{ cert = \"certs/{name}.pem\", key = \"certs/{name}.key\" }}\n")
}
