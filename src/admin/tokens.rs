//! `concordant init-tokens`, `concordant token` and `concordant revoke`: the token-signing key pair of a
//! cluster (next to its CA: `tokens.key`, private, PKCS#8 PEM, for the app's backend and
//! the command line, never read by nodes; `tokens.pub`, named in the file as
//! `[api] token_key`), user tokens minted with it (see [`crate::tokens`]), and their
//! revocation (see [`crate::revocations`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{file, io, AdminError};
use crate::config::Config;
use crate::tokens::{Rights, UserToken};

/// `concordant init-tokens`: a key pair next to the cluster CA of the file at `path`, and
/// `[api] token_key` naming its public half in the file (the previous file kept as
/// `FILE.bak`). Nodes verify user tokens once restarted with the file.
pub fn init_tokens(path: &Path, force: bool) -> Result<(PathBuf, PathBuf), AdminError> {
    let config = Config::load(path)?;
    let dir = config.ca.parent().unwrap_or(Path::new(".")).to_path_buf();
    let (private, public) = crate::init::write_token_keys(&dir, force)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let named = public
        .strip_prefix(base)
        .unwrap_or(&public)
        .to_string_lossy()
        .into_owned();
    file::apply(path, file::Change::TokenKey { key: &named })?;
    Ok((private, public))
}

/// What `concordant token` mints (its options).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TokenRequest {
    /// The user.
    #[cfg_attr(feature = "cli", arg(long))]
    pub sub: String,
    /// A document the token reaches (repeat for more).
    #[cfg_attr(feature = "cli", arg(long = "doc", value_name = "ID"))]
    pub docs: Vec<String>,
    /// Also every document the user created.
    #[cfg_attr(feature = "cli", arg(long))]
    pub owner: bool,
    /// Read only.
    #[cfg_attr(feature = "cli", arg(long))]
    pub read_only: bool,
    /// May create documents.
    #[cfg_attr(feature = "cli", arg(long))]
    pub create: bool,
    /// How long the token is valid: 90s, 15m, 1h, 7d.
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_ttl))]
    pub ttl: Duration,
    /// The token's id, for revocation (default: a random one).
    #[cfg_attr(feature = "cli", arg(long))]
    pub jti: Option<String>,
}

/// `concordant token`: a user token signed with the private key next to the cluster CA of
/// the file at `path`.
pub fn mint_token(path: &Path, request: &TokenRequest) -> Result<String, AdminError> {
    let config = Config::load(path)?;
    let key = config.ca.with_file_name(crate::init::TOKENS_PRIVATE_KEY);
    let pem = std::fs::read(&key).map_err(io(&key))?;
    let now = crate::tokens::unix_now();
    let token = UserToken {
        sub: request.sub.clone(),
        exp: now.saturating_add(request.ttl.as_secs()),
        iat: Some(now),
        jti: Some(
            request
                .jti
                .clone()
                .unwrap_or_else(|| hex::encode(rand::random::<[u8; 12]>())),
        ),
        docs: request.docs.iter().cloned().collect(),
        owner: request.owner,
        rights: if request.read_only {
            Rights::Read
        } else {
            Rights::Write
        },
        create: request.create,
    };
    crate::tokens::mint(&pem, &token, now).map_err(token_error)
}

/// `concordant revoke`: records the revocation through the target node (any node of the
/// file by default), from which it reaches every node. Returns the node's answer.
pub async fn revoke(
    config: &Config,
    target: &super::Target,
    what: &crate::revocations::Revoke,
) -> Result<serde_json::Value, AdminError> {
    use crate::revocations::Revoke;
    let body = match what {
        Revoke::Jti(jti) => serde_json::json!({ "jti": jti }),
        Revoke::Sub(sub) => serde_json::json!({ "sub": sub }),
    };
    super::ask(
        config,
        target,
        hyper::Method::POST,
        "/v1/revocations",
        Some(body),
        None,
    )
    .await
}

/// A duration as `90s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 15m, 1h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use s, m, h or d"
            ))
        }
    };
    match n.checked_mul(unit) {
        Some(0) => Err("the time to live must be more than 0".into()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{text:?} is too long")),
    }
}

fn token_error(e: crate::tokens::TokenError) -> AdminError {
    AdminError::Token(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "1w", "0s", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_tokens_names_the_key_and_minted_tokens_verify_with_it() {
        let dir = tempfile::tempdir().expect("a directory");
        let opts = crate::init::InitOptions::new(dir.path(), 2, crate::config::TopologyKind::Mesh);
        let path = crate::init::init_cluster(&opts).expect("a cluster");
        // A cluster made before user tokens: no key, none named.
        let text = std::fs::read_to_string(&path).expect("the file");
        let older: String = text
            .lines()
            .filter(|l| !l.starts_with("token_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, older).expect("written");
        for key in [
            crate::init::TOKENS_PRIVATE_KEY,
            crate::init::TOKENS_PUBLIC_KEY,
        ] {
            std::fs::remove_file(dir.path().join("certs").join(key)).expect("removed");
        }
        assert_eq!(Config::load(&path).expect("loads").api_token_key, None);
        let (_, public) = init_tokens(&path, false).expect("keys written");
        let config = Config::load(&path).expect("loads");
        assert_eq!(config.api_token_key.as_deref(), Some(public.as_path()));
        assert!(
            init_tokens(&path, false).is_err(),
            "keys are not replaced unforced"
        );
        let request = TokenRequest {
            sub: "alice".into(),
            docs: vec!["doc-a".into()],
            owner: false,
            read_only: true,
            create: false,
            ttl: Duration::from_secs(60),
            jti: None,
        };
        let token = mint_token(&path, &request).expect("minted");
        let verifier = config.token_verifier().expect("a key").expect("named");
        let user = verifier
            .verify(&token, crate::tokens::unix_now())
            .expect("valid");
        assert_eq!(user.sub, "alice");
        assert!(user.names("doc-a") && !user.writes());
        assert!(user.jti.is_some());
    }
}
