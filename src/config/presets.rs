//! Presets for known providers: the adapter to use, the base URL and how the key is sent, so a
//! config needs only `kind` and `api_key`.

/// Which adapter speaks to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// OpenAI-compatible pass-through.
    OpenAi,
    /// Anthropic Messages, translated.
    Anthropic,
    /// Gemini generateContent, translated.
    Gemini,
    /// Amazon Bedrock Converse, translated and SigV4-signed.
    Bedrock,
    /// The scripted in-process mock.
    Mock,
}

/// A preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The adapter.
    pub adapter: Adapter,
    /// Default base URL (`None`: the config must give one).
    pub base_url: Option<&'static str>,
    /// Header carrying the key instead of `Authorization: Bearer`.
    pub auth_header: Option<&'static str>,
    /// Whether a key is needed.
    pub needs_key: bool,
}

const fn openai(url: &'static str) -> Preset {
    Preset {
        adapter: Adapter::OpenAi,
        base_url: Some(url),
        auth_header: None,
        needs_key: true,
    }
}

const fn local(url: &'static str) -> Preset {
    Preset {
        adapter: Adapter::OpenAi,
        base_url: Some(url),
        auth_header: None,
        needs_key: false,
    }
}

/// The preset for `kind`, if known.
pub fn preset(kind: &str) -> Option<Preset> {
    Some(match kind {
        "openai" => Preset {
            adapter: Adapter::OpenAi,
            base_url: Some("https://api.openai.com/v1"),
            auth_header: None,
            needs_key: false,
        },
        "azure" => Preset {
            adapter: Adapter::OpenAi,
            base_url: None,
            auth_header: Some("api-key"),
            needs_key: true,
        },
        "deepseek" => openai("https://api.deepseek.com/v1"),
        "mistral" => openai("https://api.mistral.ai/v1"),
        "qwen" => openai("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        "groq" => openai("https://api.groq.com/openai/v1"),
        "together" => openai("https://api.together.xyz/v1"),
        "fireworks" => openai("https://api.fireworks.ai/inference/v1"),
        "openrouter" => openai("https://openrouter.ai/api/v1"),
        "xai" => openai("https://api.x.ai/v1"),
        "vllm" => local("http://127.0.0.1:8000/v1"),
        "ollama" => local("http://127.0.0.1:11434/v1"),
        "llamacpp" => local("http://127.0.0.1:8080/v1"),
        "anthropic" => Preset {
            adapter: Adapter::Anthropic,
            base_url: Some("https://api.anthropic.com"),
            auth_header: Some("x-api-key"),
            needs_key: true,
        },
        "gemini" => Preset {
            adapter: Adapter::Gemini,
            base_url: Some("https://generativelanguage.googleapis.com"),
            auth_header: Some("x-goog-api-key"),
            needs_key: true,
        },
        "vertex" => Preset {
            adapter: Adapter::Gemini,
            // `https://{location}-aiplatform.googleapis.com`, from `location`.
            base_url: None,
            auth_header: None,
            needs_key: false,
        },
        "bedrock" => Preset {
            adapter: Adapter::Bedrock,
            // `https://bedrock-runtime.{region}.amazonaws.com`, from `region`.
            base_url: None,
            auth_header: None,
            needs_key: false,
        },
        "mock" => Preset {
            adapter: Adapter::Mock,
            base_url: None,
            auth_header: None,
            needs_key: false,
        },
        _ => return None,
    })
}

/// Every known kind.
pub const KINDS: &[&str] = &[
    "openai",
    "azure",
    "deepseek",
    "mistral",
    "qwen",
    "groq",
    "together",
    "fireworks",
    "openrouter",
    "xai",
    "vllm",
    "ollama",
    "llamacpp",
    "anthropic",
    "gemini",
    "vertex",
    "bedrock",
    "mock",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_preset() {
        for k in KINDS {
            assert!(preset(k).is_some(), "{k}");
        }
        assert!(preset("nope").is_none());
        assert_eq!(preset("azure").unwrap().auth_header, Some("api-key"));
    }
}
