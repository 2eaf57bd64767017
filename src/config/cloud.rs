//! Providers that authenticate with short-lived tokens instead of a static key:
//! `auth = "entra"` (Azure OpenAI with Microsoft Entra ID) and `kind = "vertex"` (Gemini on
//! Vertex AI with a service account), and `kind = "bedrock"` (Amazon Bedrock with AWS
//! credentials, every call signed with SigV4). See [`crate::provider::credentials`] and
//! [`crate::provider::sigv4`].

use std::sync::Arc;

use super::presets::Adapter;
use super::{ConfigError, ProviderConfig, interpolate};
use crate::provider::bedrock::{bedrock_base_url, region_ok};
use crate::provider::credentials::{
    AZURE_COGNITIVE_SERVICES_SCOPE, EntraClientCredentials, GOOGLE_CLOUD_PLATFORM_SCOPE,
    ServiceAccount, ServiceAccountJwt, TokenSource,
};
use crate::provider::gemini::{path_segment_ok, vertex_base_url};
use crate::provider::sigv4::AwsCredentials;
use crate::secret::Secret;

/// The default Entra authority.
pub(super) const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// How a provider authenticates, when not with a static key.
pub(super) enum CloudAuth {
    /// A static key (or none).
    Key,
    /// Microsoft Entra ID client credentials.
    Entra(TokenSource),
    /// Vertex AI with a service account.
    Vertex(Vertex),
    /// Amazon Bedrock with AWS credentials (SigV4).
    Bedrock(Bedrock),
}

/// An Amazon Bedrock provider's settings.
pub(super) struct Bedrock {
    pub(super) region: String,
    pub(super) credentials: AwsCredentials,
    /// The default base URL for `region`.
    pub(super) base_url: String,
}

/// A Vertex AI provider's settings.
pub(super) struct Vertex {
    pub(super) source: TokenSource,
    pub(super) project: String,
    pub(super) location: String,
    /// The default base URL for `location`.
    pub(super) base_url: String,
}

/// How provider `name` authenticates; the fields that do not apply to it are refused.
pub(super) fn cloud_auth(
    name: &str,
    p: &ProviderConfig,
    adapter: Adapter,
    file: &str,
) -> Result<CloudAuth, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    let vertex = p.kind == "vertex";
    if p.kind == "bedrock" {
        return match p.auth.as_deref() {
            None | Some("sigv4") => {
                refuse_unused(p, "sigv4", file, &field)?;
                bedrock_settings(p, file, &field).map(CloudAuth::Bedrock)
            }
            Some(other) => Err(ConfigError::field(
                file,
                &field("auth"),
                format!(
                    "`{other}` is not supported for kind `bedrock`; expected `sigv4` (its only way)"
                ),
            )),
        };
    }
    let auth = match (p.auth.as_deref(), vertex) {
        (None, false) | (Some("api_key"), false) => "api_key",
        (None, true) | (Some("service_account"), true) => "service_account",
        (Some("entra"), false) if adapter == Adapter::OpenAi => "entra",
        (Some(other), _) => {
            let allowed = match (vertex, adapter) {
                (true, _) => "`service_account` (the only way for kind `vertex`)",
                (false, Adapter::OpenAi) => "`api_key` or `entra`",
                _ => "`api_key` (`entra` is for OpenAI-compatible kinds such as `azure`)",
            };
            return Err(ConfigError::field(
                file,
                &field("auth"),
                format!(
                    "`{other}` is not supported for kind `{}`; expected {allowed}",
                    p.kind
                ),
            ));
        }
    };
    refuse_unused(p, auth, file, &field)?;
    match auth {
        "entra" => entra(name, p, file, &field).map(CloudAuth::Entra),
        "service_account" => vertex_settings(name, p, file, &field).map(CloudAuth::Vertex),
        _ => Ok(CloudAuth::Key),
    }
}

/// Refuse a setting that `auth` does not use (a typo would otherwise pass unnoticed).
fn refuse_unused(
    p: &ProviderConfig,
    auth: &str,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let entra = [
        ("tenant_id", p.tenant_id.is_some()),
        ("client_id", p.client_id.is_some()),
        ("client_secret", p.client_secret.is_some()),
        ("authority", p.authority.is_some()),
    ];
    let vertex = [
        ("project", p.project.is_some()),
        ("location", p.location.is_some()),
        ("credentials_file", p.credentials_file.is_some()),
    ];
    let token = [("scope", p.scope.is_some())];
    let aws = [
        ("region", p.region.is_some()),
        ("access_key_id", p.access_key_id.is_some()),
        ("secret_access_key", p.secret_access_key.is_some()),
        ("session_token", p.session_token.is_some()),
    ];
    let (unused, why): (Vec<(&str, bool)>, &str) = match auth {
        "sigv4" => (
            entra.into_iter().chain(vertex).chain(token).collect(),
            "only with auth = \"entra\" or kind = \"vertex\"",
        ),
        _ if aws.iter().any(|(_, set)| *set) => (aws.into(), "only for kind `bedrock`"),
        "entra" => (vertex.into(), "only for kind `vertex`"),
        "service_account" => (entra.into(), "only with auth = \"entra\""),
        _ => (
            entra.into_iter().chain(vertex).chain(token).collect(),
            "only with auth = \"entra\" or kind = \"vertex\"",
        ),
    };
    if let Some((f, _)) = unused.iter().find(|(_, set)| *set) {
        return Err(ConfigError::field(
            file,
            &field(f),
            format!("is used {why}"),
        ));
    }
    if auth == "sigv4" && p.api_key.is_some() {
        return Err(ConfigError::field(
            file,
            &field("api_key"),
            "is not used with kind `bedrock` (set access_key_id and secret_access_key)",
        ));
    }
    if auth != "api_key" && p.api_key.is_some() {
        return Err(ConfigError::field(
            file,
            &field("api_key"),
            format!("is not used with auth = \"{auth}\" (the gateway sends a bearer token)"),
        ));
    }
    Ok(())
}

/// A required string setting, `${VAR}` resolved.
fn required(
    value: Option<&String>,
    what: &str,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<String, ConfigError> {
    let v = value.ok_or_else(|| ConfigError::field(file, &field(what), "is required"))?;
    let v = interpolate(v, file, &field(what))?;
    if v.trim().is_empty() {
        return Err(ConfigError::field(file, &field(what), "must not be empty"));
    }
    Ok(v.trim().to_owned())
}

fn entra(
    name: &str,
    p: &ProviderConfig,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<TokenSource, ConfigError> {
    let tenant = required(p.tenant_id.as_ref(), "tenant_id", file, field)?;
    let client = required(p.client_id.as_ref(), "client_id", file, field)?;
    let secret = required(p.client_secret.as_ref(), "client_secret", file, field)?;
    let authority = match &p.authority {
        Some(a) => interpolate(a, file, &field("authority"))?,
        None => ENTRA_AUTHORITY.to_owned(),
    };
    let scope = match &p.scope {
        Some(s) => interpolate(s, file, &field("scope"))?,
        None => AZURE_COGNITIVE_SERVICES_SCOPE.to_owned(),
    };
    let fetcher =
        EntraClientCredentials::new(&authority, &tenant, &client, Secret::new(secret), &scope)
            .map_err(|e| {
                let f = ["tenant_id", "client_id", "client_secret"]
                    .into_iter()
                    .find(|f| e.0.starts_with(f))
                    .unwrap_or("authority");
                ConfigError::field(file, &field(f), e)
            })?;
    Ok(TokenSource::shared(name, fetcher))
}

fn vertex_settings(
    name: &str,
    p: &ProviderConfig,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<Vertex, ConfigError> {
    let path = required(p.credentials_file.as_ref(), "credentials_file", file, field)?;
    let cf = field("credentials_file");
    let json = std::fs::read(&path)
        .map_err(|e| ConfigError::field(file, &cf, format!("cannot read `{path}`: {e}")))?;
    let account = ServiceAccount::from_json(&json)
        .map_err(|e| ConfigError::field(file, &cf, format!("`{path}`: {e}")))?;
    let project = match (&p.project, account.project_id()) {
        (Some(_), _) => required(p.project.as_ref(), "project", file, field)?,
        (None, Some(id)) => id.to_owned(),
        (None, None) => {
            return Err(ConfigError::field(
                file,
                &field("project"),
                format!("is required (`{path}` names no project_id)"),
            ));
        }
    };
    let location = required(p.location.as_ref(), "location", file, field)?;
    for (f, v) in [("project", &project), ("location", &location)] {
        if !path_segment_ok(v) {
            return Err(ConfigError::field(
                file,
                &field(f),
                format!("`{v}` must be letters, digits, `-`, `_`, `.` or `:`"),
            ));
        }
    }
    let scope = match &p.scope {
        Some(s) => interpolate(s, file, &field("scope"))?,
        None => GOOGLE_CLOUD_PLATFORM_SCOPE.to_owned(),
    };
    let fetcher = ServiceAccountJwt::new(Arc::new(account), &scope)
        .map_err(|e| ConfigError::field(file, &cf, format!("`{path}`: {e}")))?;
    Ok(Vertex {
        source: TokenSource::shared(name, fetcher),
        base_url: vertex_base_url(&location),
        project,
        location,
    })
}

fn bedrock_settings(
    p: &ProviderConfig,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<Bedrock, ConfigError> {
    let region = required(p.region.as_ref(), "region", file, field)?;
    if !region_ok(&region) {
        return Err(ConfigError::field(
            file,
            &field("region"),
            format!("`{region}` must be lower-case letters, digits and `-` (e.g. `us-east-1`)"),
        ));
    }
    let access_key_id = required(p.access_key_id.as_ref(), "access_key_id", file, field)?;
    let secret = required(
        p.secret_access_key.as_ref(),
        "secret_access_key",
        file,
        field,
    )?;
    let session_token = match &p.session_token {
        Some(_) => Some(Secret::new(required(
            p.session_token.as_ref(),
            "session_token",
            file,
            field,
        )?)),
        None => None,
    };
    Ok(Bedrock {
        base_url: bedrock_base_url(&region),
        region,
        credentials: AwsCredentials {
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token,
        },
    })
}
