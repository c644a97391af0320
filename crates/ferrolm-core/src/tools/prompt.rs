//! The system prompt of the generic format: for a model whose template
//! ignores `tools`, the tools and the call syntax described in words. It
//! uses the Hermes markup (`<tool_call>` blocks of `{"name", "arguments"}`,
//! results in `<tool_response>`), the most common format in open models'
//! training data, so a small model has the best chance of following it.

use super::json_text::spaced;
use super::spec::{Tool, ToolChoice};

/// The prompt describing `tools` under `choice` (never called with
/// [`ToolChoice::None`]: then the tools are not shown at all).
pub(crate) fn generic_system_prompt(tools: &[Tool], choice: &ToolChoice, parallel: bool) -> String {
    let mut prompt = String::from(
        "You can call tools (functions) to help with the user's request. Each tool is described \
         below by a JSON object with its name, what it does and the JSON schema of its arguments:\n\
         <tools>\n",
    );
    for tool in tools {
        prompt.push_str(&spaced(&tool.function_json()));
        prompt.push('\n');
    }
    prompt.push_str(
        "</tools>\n\n\
         To call a tool, write a JSON object with the tool's name and its arguments inside \
         <tool_call></tool_call> tags:\n\
         <tool_call>\n\
         {\"name\": <tool name>, \"arguments\": <arguments as a JSON object>}\n\
         </tool_call>\n",
    );
    prompt.push_str(if parallel {
        "To call several tools at once, write one <tool_call> block per call, one after the other.\n"
    } else {
        "Call at most one tool per reply.\n"
    });
    prompt.push_str("The results of your calls come back inside <tool_response></tool_response> tags.\n");
    match choice {
        ToolChoice::Named(name) => {
            prompt.push_str(&format!("Now call the tool `{name}`; reply with the call only."));
        }
        ToolChoice::Required if parallel => {
            prompt.push_str("Now call one or more of the tools; reply with the calls only.")
        }
        ToolChoice::Required => prompt.push_str("Now call one of the tools; reply with the call only."),
        ToolChoice::Auto | ToolChoice::None => prompt.push_str(
            "Call a tool only when it helps; otherwise, or once you have the results you need, reply to \
             the user directly.",
        ),
    }
    prompt
}
