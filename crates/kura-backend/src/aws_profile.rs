//! The AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read
//! the way the AWS CLI does for the keys kura needs: `aws_access_key_id`,
//! `aws_secret_access_key`, `aws_session_token`, `region`, `endpoint_url`. The profile is
//! `AWS_PROFILE` (default `default`); `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`
//! override the paths. object_store reads only environment variables, hence this module.

use std::collections::HashMap;
use std::path::PathBuf;

/// Values found for one profile.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Parse an INI file into sections of key/value pairs.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn home_file(var: &str, default: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(default))
}

/// Read the current profile from the shared files (missing files are fine).
pub(crate) fn load() -> Profile {
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let creds = home_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let config = home_file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    from_texts(&name, &creds, &config)
}

pub(crate) fn from_texts(profile: &str, credentials: &str, config: &str) -> Profile {
    let creds = parse_ini(credentials);
    let conf = parse_ini(config);
    // In the config file, profiles other than "default" are written `[profile NAME]`.
    let conf_section = if profile == "default" {
        conf.get("default")
    } else {
        conf.get(&format!("profile {profile}"))
            .or_else(|| conf.get(profile))
    };
    let empty = HashMap::new();
    let c = creds.get(profile).unwrap_or(&empty);
    let f = conf_section.unwrap_or(&empty);
    let get = |k: &str| c.get(k).or_else(|| f.get(k)).cloned();
    Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: f.get("region").or_else(|| c.get("region")).cloned(),
        endpoint_url: get("endpoint_url"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_both_files() {
        let creds = "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n\n[prod]\naws_access_key_id=AKPROD\naws_secret_access_key=sprod\naws_session_token = tok\n";
        let config = "[default]\nregion = eu-west-1\n[profile prod]\nregion = us-east-2\nendpoint_url = https://s3.example\n";
        let d = from_texts("default", creds, config);
        assert_eq!(d.access_key_id.as_deref(), Some("AKDEF"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        let p = from_texts("prod", creds, config);
        assert_eq!(p.secret_access_key.as_deref(), Some("sprod"));
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.region.as_deref(), Some("us-east-2"));
        assert_eq!(p.endpoint_url.as_deref(), Some("https://s3.example"));
        assert_eq!(from_texts("none", creds, config), Profile::default());
    }
}
