//! Which tool-call format a model speaks, read from its chat template.
//!
//! The template is the best evidence of what the model was trained on: a
//! template that writes `<tool_call>` taught the model Hermes blocks, one that
//! writes Llama 3.1's `"parameters"` JSON taught that, and one that never
//! looks at `tools` taught nothing, so we describe the tools ourselves.

use serde::{Deserialize, Serialize};

/// The markup a model uses to call tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one
    /// block per call (Hermes 2 Pro, Qwen2.5, Qwen3). The template renders
    /// `tools` itself.
    Hermes,
    /// The whole reply is `{"name": ..., "parameters": {...}}`, optionally
    /// after `<|python_tag|>` (Llama 3.1-3.3). The template renders `tools`.
    Llama3Json,
    /// The template ignores `tools` (SmolLM2) or there is none: we describe
    /// the tools in a system prompt and use the Hermes markup, so that one
    /// parser serves both.
    Generic,
}

impl ToolFormat {
    /// The format the chat template `template_source` implies (`None`: the
    /// model has no template, so [`ToolFormat::Generic`]).
    pub fn detect(template_source: Option<&str>) -> ToolFormat {
        let Some(source) = template_source else {
            return ToolFormat::Generic;
        };
        // Hermes first: a template that writes tool-call blocks uses them,
        // whatever else it mentions.
        if source.contains("<tool_call>") {
            return ToolFormat::Hermes;
        }
        let mentions_tools = source.contains("tools");
        let llama = source.contains("<|python_tag|>")
            || source.contains("Environment: ipython")
            || (mentions_tools && source.contains("\"parameters\""));
        if llama {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Generic
        }
    }

    /// The format's name as the server and Python see it.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Generic => "generic",
        }
    }
}

impl std::fmt::Display for ToolFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
