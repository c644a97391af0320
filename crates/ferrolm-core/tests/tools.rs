//! Tool calling over the committed templates: format detection, request
//! validation, histories rendered through Qwen3 (Hermes), Llama 3.1 and
//! SmolLM2 (generic), forced calls decoded under random logits, and the
//! streaming parser agreeing with one-shot parsing on every split.

use std::path::{Path, PathBuf};

use ferrolm_core::sampling::{Constraint, ConstraintFactory, Sampler, SamplingConfig};
use ferrolm_core::tokenizer::ChatTemplate;
use ferrolm_core::tools::{
    parse_tools, ParsedOutput, ToolCall, ToolCalling, ToolChoice, ToolEvent, ToolFormat,
};
use ferrolm_core::{Error, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// SmolLM2's logits are as wide as its vocabulary.
const VOCAB: usize = 49152;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers")
}

fn template_source(name: &str) -> String {
    let path = match name {
        "smollm2" => fixtures().join("smollm2/chat_template.jinja"),
        other => fixtures().join(format!("chat/{other}.jinja")),
    };
    std::fs::read_to_string(path).unwrap()
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_pretrained(fixtures().join("smollm2")).unwrap()
}

/// Two tools with small, fully bounded argument schemas.
fn tools_json() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "unit": {"enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "The time now.",
            "parameters": {
                "type": "object",
                "properties": {
                    "hour24": {"type": "boolean"},
                    "offset": {"type": "integer", "minimum": -12, "maximum": 14}
                },
                "required": ["hour24", "offset"],
                "additionalProperties": false
            }
        }}
    ])
}

fn calling(format: ToolFormat, choice: Option<Value>, parallel: bool) -> ToolCalling {
    let tools = parse_tools(&tools_json()).unwrap();
    let choice = ToolChoice::parse(choice.as_ref(), &tools).unwrap();
    ToolCalling::new(format, tools, choice, parallel).unwrap()
}

fn invalid_input(err: Error) -> String {
    match err {
        Error::InvalidInput(msg) => msg,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

// ---------------------------------------------------------------- detection

#[test]
fn detects_the_format_of_each_template() {
    assert_eq!(ToolFormat::detect(Some(&template_source("qwen3"))), ToolFormat::Hermes);
    for llama in ["llama-3.1", "llama-3.2", "llama-3.3"] {
        assert_eq!(ToolFormat::detect(Some(&template_source(llama))), ToolFormat::Llama3Json, "{llama}");
    }
    assert_eq!(ToolFormat::detect(Some(&template_source("smollm2"))), ToolFormat::Generic);
    let tok = smollm2();
    assert_eq!(ToolFormat::detect(tok.chat_template().map(|t| t.source())), ToolFormat::Generic);
    assert_eq!(ToolFormat::detect(None), ToolFormat::Generic);
    assert_eq!(ToolFormat::Llama3Json.name(), "llama3_json");
}

// ---------------------------------------------------------- request checks

#[test]
fn parse_tools_reads_openai_tools() {
    let tools = parse_tools(&tools_json()).unwrap();
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[0].name, "get_weather");
    assert_eq!(tools[0].description.as_deref(), Some("The current weather in a city."));
    assert_eq!(tools[1].parameters["required"], json!(["hour24", "offset"]));
    let bare = parse_tools(&json!([{"type": "function", "function": {"name": "ping"}}])).unwrap();
    assert_eq!(bare[0].parameters, json!({"type": "object", "properties": {}}));
    assert_eq!(bare[0].description, None);
    assert_eq!(
        bare[0].to_openai(),
        json!({"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}})
    );
    assert!(parse_tools(&json!([])).unwrap().is_empty());
}

#[test]
fn parse_tools_refuses_bad_tools_naming_the_field() {
    let f = |function: Value| json!([{"type": "function", "function": function}]);
    let cases = [
        (json!({"type": "function"}), "`tools` must be a list"),
        (json!([{"type": "code_interpreter"}]), "tools[0].type"),
        (json!([{"function": {"name": "a"}}]), "tools[0].type"),
        (json!([{"type": "function"}]), "tools[0].function"),
        (f(json!({"description": "no name"})), "tools[0].function.name` is missing"),
        (f(json!({"name": ""})), "tools[0].function.name` is empty"),
        (f(json!({"name": 7})), "tools[0].function.name` must be a string"),
        (f(json!({"name": "has space"})), "\"has space\""),
        (f(json!({"name": "dot.ted"})), "\"dot.ted\""),
        (f(json!({"name": "x".repeat(65)})), "1 to 64"),
        (f(json!({"name": "a", "parameters": "object"})), "tools[0].function.parameters"),
        (f(json!({"name": "a", "parameters": [1]})), "tools[0].function.parameters"),
        (f(json!({"name": "a", "description": 3})), "tools[0].function.description"),
        (
            json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]),
            "tools[1].function.name`: two tools are named \"a\"",
        ),
    ];
    for (tools, needle) in cases {
        let msg = invalid_input(parse_tools(&tools).unwrap_err());
        assert!(msg.contains(needle), "{tools}: {msg:?} should mention {needle:?}");
    }
    assert!(parse_tools(&json!([{"type": "function", "function": {"name": "A-z_09"}}])).is_ok());
    assert!(parse_tools(&json!([{"type": "function", "function": {"name": "x".repeat(64)}}])).is_ok());
}

#[test]
fn tool_choice_reads_openai_choices() {
    let tools = parse_tools(&tools_json()).unwrap();
    let parse = |v: Option<Value>| ToolChoice::parse(v.as_ref(), &tools);
    assert_eq!(parse(None).unwrap(), ToolChoice::Auto);
    assert_eq!(parse(Some(Value::Null)).unwrap(), ToolChoice::Auto);
    assert_eq!(parse(Some(json!("none"))).unwrap(), ToolChoice::None);
    assert_eq!(parse(Some(json!("auto"))).unwrap(), ToolChoice::Auto);
    assert_eq!(parse(Some(json!("required"))).unwrap(), ToolChoice::Required);
    assert_eq!(
        parse(Some(json!({"type": "function", "function": {"name": "get_time"}}))).unwrap(),
        ToolChoice::Named("get_time".into())
    );
    let msg =
        invalid_input(parse(Some(json!({"type": "function", "function": {"name": "launch"}}))).unwrap_err());
    assert!(msg.contains("\"launch\""), "{msg}");
    for bad in
        [json!("always"), json!(3), json!({"type": "function"}), json!({"function": {"name": "get_time"}})]
    {
        let msg = invalid_input(parse(Some(bad.clone())).unwrap_err());
        assert!(msg.contains("tool_choice"), "{bad}: {msg}");
    }
    // Without tools there is nothing to call.
    assert_eq!(ToolChoice::parse(None, &[]).unwrap(), ToolChoice::None);
    assert!(ToolChoice::parse(Some(&json!("required")), &[]).is_err());
    let err = ToolCalling::new(ToolFormat::Hermes, tools.clone(), ToolChoice::Named("x".into()), true);
    assert!(invalid_input(err.unwrap_err()).contains("\"x\""));
}

#[test]
fn from_request_detects_and_validates() {
    let qwen = template_source("qwen3");
    let calling =
        ToolCalling::from_request(Some(&qwen), &tools_json(), Some(&json!("required")), false).unwrap();
    assert_eq!(calling.format(), ToolFormat::Hermes);
    assert_eq!(calling.choice(), &ToolChoice::Required);
    assert!(!calling.parallel_tool_calls());
    assert!(ToolCalling::from_request(None, &json!({}), None, true).is_err());
}

// ------------------------------------------------------------- templates

/// A conversation with one call (arguments as JSON text, as OpenAI sends
/// them) and its result.
fn history() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}
        }]}),
        json!({"role": "tool", "tool_call_id": "call_abc", "content": "{\"temperature\": 21}"}),
    ]
}

fn render(source: &str, calling: &ToolCalling, mut messages: Vec<Value>) -> String {
    calling.prepare_messages(&mut messages).unwrap();
    let template = ChatTemplate::new(source)
        .unwrap()
        .with_special_tokens([("bos_token", "<|begin_of_text|>"), ("eos_token", "<|eot_id|>")]);
    let messages = serde_json::to_string(&messages).unwrap();
    let kwargs = serde_json::to_string(&calling.template_kwargs()).unwrap();
    template.render_json(&messages, true, Some(&kwargs)).unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn qwen3_renders_the_call_once_and_the_result() {
    let source = template_source("qwen3");
    let calling = calling(ToolFormat::detect(Some(&source)), None, true);
    let text = render(&source, &calling, history());
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
    assert_eq!(count(&text, call), 1, "{text}");
    assert!(!text.contains("\\\"city\\\""), "double-encoded: {text}");
    assert!(text.contains("<tool_response>\n{\"temperature\": 21}\n</tool_response>"), "{text}");
    // The tools, as the template lists them.
    assert!(
        text.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
        "{text}"
    );
    assert!(text.contains("Be brief."));
}

#[test]
fn llama31_renders_the_call_once_and_the_result_unquoted() {
    let source = template_source("llama-3.1");
    let calling = calling(ToolFormat::detect(Some(&source)), None, true);
    let text = render(&source, &calling, history());
    let call = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}";
    assert_eq!(count(&text, call), 1, "{text}");
    assert!(!text.contains("\\\"city\\\""), "double-encoded: {text}");
    assert!(
        text.contains("<|start_header_id|>ipython<|end_header_id|>\n\n{\"temperature\": 21}<|eot_id|>"),
        "{text}"
    );
    assert!(text.contains("Environment: ipython"), "{text}");
    assert!(text.contains("\"name\": \"get_time\""), "the tools are listed: {text}");

    // Two calls in one message: the template takes one per message.
    let mut messages = history();
    messages[2]["tool_calls"].as_array_mut().unwrap().push(json!({
        "id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "{\"hour24\": true, \"offset\": 1}"}
    }));
    messages.push(json!({"role": "tool", "tool_call_id": "call_def", "content": "12:00"}));
    let text = render(&source, &calling, messages);
    assert_eq!(count(&text, call), 1, "{text}");
    assert_eq!(
        count(&text, "{\"name\": \"get_time\", \"parameters\": {\"hour24\": true, \"offset\": 1}}"),
        1,
        "{text}"
    );
}

#[test]
fn smollm2_renders_tools_calls_and_results_as_text() {
    let mut tok = smollm2();
    let source = tok.chat_template().unwrap().source().to_string();
    let calling = calling(ToolFormat::detect(Some(&source)), None, true);
    assert_eq!(calling.format(), ToolFormat::Generic);
    assert_eq!(calling.template_kwargs(), json!({}));
    let mut messages = history();
    calling.prepare_messages(&mut messages).unwrap();
    tok.set_chat_template(&source).unwrap();
    let text = tok.apply_chat_template_json(&serde_json::to_string(&messages).unwrap(), true, None).unwrap();

    // The system prompt: the tools, then the caller's own system text.
    assert!(text.starts_with("<|im_start|>system\nYou can call tools"), "{text}");
    assert!(text.contains("<tools>\n{\"name\": \"get_weather\", \"description\": \"The current weather in a city.\", \"parameters\": {\"type\": \"object\""), "{text}");
    assert!(text.contains("{\"name\": \"get_time\""), "{text}");
    assert!(text.contains("\n\nBe brief.<|im_end|>"), "{text}");
    assert_eq!(count(&text, "<|im_start|>system"), 1);
    // The call as the model is asked to write it, once.
    let call = "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call><|im_end|>";
    assert_eq!(count(&text, call), 1, "{text}");
    assert!(!text.contains("\\\"city\\\""), "double-encoded: {text}");
    // The result, as a user turn naming the tool.
    assert!(text.contains("<|im_start|>user\n<tool_response name=\"get_weather\">\n{\"temperature\": 21}\n</tool_response><|im_end|>"), "{text}");
    assert!(!text.contains("<|im_start|>tool"), "{text}");
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn generic_prompt_is_a_new_system_message_when_there_is_none() {
    let calling = calling(ToolFormat::Generic, Some(json!("required")), false);
    let mut messages = vec![json!({"role": "user", "content": "hi"})];
    calling.prepare_messages(&mut messages).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    let prompt = messages[0]["content"].as_str().unwrap();
    assert!(prompt.contains("Call at most one tool per reply."), "{prompt}");
    assert!(prompt.contains("Now call one of the tools"), "{prompt}");
    assert_eq!(messages[1], json!({"role": "user", "content": "hi"}));
}

#[test]
fn generic_merges_consecutive_results_and_keeps_content() {
    let calling = calling(ToolFormat::Generic, None, true);
    let mut messages = vec![
        json!({"role": "user", "content": "both"}),
        json!({"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"celsius\"}"}},
            {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
        ]}),
        json!({"role": "tool", "tool_call_id": "a", "content": "cold"}),
        json!({"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "noon"}]}),
        json!({"role": "tool", "content": "orphan"}),
    ];
    calling.prepare_messages(&mut messages).unwrap();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(
        messages[2]["content"],
        "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
    );
    assert!(messages[2].get("tool_calls").is_none());
    assert_eq!(
        messages[3],
        json!({"role": "user", "content": "<tool_response name=\"get_weather\">\ncold\n</tool_response>\n<tool_response name=\"get_time\">\nnoon\n</tool_response>\n<tool_response>\norphan\n</tool_response>"})
    );
}

#[test]
fn tool_choice_none_hides_the_tools() {
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Generic] {
        let calling = calling(format, Some(json!("none")), true);
        assert_eq!(calling.template_kwargs(), json!({}), "{format}");
        assert_eq!(calling.constraint(), None);
        let mut messages = vec![json!({"role": "user", "content": "hi"})];
        calling.prepare_messages(&mut messages).unwrap();
        assert_eq!(messages, vec![json!({"role": "user", "content": "hi"})], "{format}");
        // Nothing is a call: the reply is all content.
        let text = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let out = calling.parse(text);
        assert!(out.calls.is_empty());
        assert_eq!(out.content.as_deref(), Some(text));
    }
    let hermes = calling(ToolFormat::Hermes, None, true);
    assert_eq!(hermes.template_kwargs()["tools"].as_array().unwrap().len(), 2);
    assert_eq!(hermes.template_kwargs()["tools"][0], tools_json()[0]);
    assert_eq!(hermes.constraint(), None);
}

#[test]
fn bad_arguments_are_refused_naming_the_message() {
    let calling = calling(ToolFormat::Hermes, None, true);
    let mut messages = history();
    messages[2]["tool_calls"][0]["function"]["arguments"] = json!("{\"city\": ");
    let msg = invalid_input(calling.prepare_messages(&mut messages).unwrap_err());
    assert!(msg.contains("messages[2].tool_calls[0].function.arguments"), "{msg}");
    messages[2]["tool_calls"][0]["function"]["arguments"] = json!("[1, 2]");
    let msg = invalid_input(calling.prepare_messages(&mut messages).unwrap_err());
    assert!(msg.contains("messages[2].tool_calls[0].function.arguments"), "{msg}");
    let mut messages = history();
    messages[2]["tool_calls"] = json!({"id": "x"});
    assert!(invalid_input(calling.prepare_messages(&mut messages).unwrap_err())
        .contains("messages[2].tool_calls"));
    let mut messages = history();
    messages[2]["tool_calls"][0]["function"] = json!({"arguments": "{}"});
    assert!(invalid_input(calling.prepare_messages(&mut messages).unwrap_err())
        .contains("messages[2].tool_calls[0].function.name"));
    // Arguments already an object, and empty tool_calls, are fine.
    let mut messages = history();
    messages[2]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Rome"});
    messages[1]["tool_calls"] = json!([]);
    calling.prepare_messages(&mut messages).unwrap();
    assert!(messages[1].get("tool_calls").is_none());
    assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], json!({"city": "Rome"}));
}

// ------------------------------------------------------------- forced calls

/// Greedy decoding under `constraint` with random logits, until an
/// end-of-sequence token.
fn decode_random(tok: &Tokenizer, factory: &ConstraintFactory, constraint: &Constraint, seed: u64) -> String {
    const MAX: usize = 1500;
    let config = SamplingConfig { constraint: Some(constraint.clone()), ..SamplingConfig::greedy(MAX) };
    let mut sampler = Sampler::new(config, 0).unwrap();
    sampler.constrain(factory.compile(constraint).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..MAX {
        let logits: Vec<f32> = (0..factory.vocab_size()).map(|_| rng.random::<f32>()).collect();
        let token = sampler.sample(&logits, &out).unwrap().token;
        if tok.eos_ids().contains(&token) {
            return tok.decode(&out, false).unwrap();
        }
        out.push(token);
    }
    panic!("no end-of-sequence within {MAX} tokens: {:?}", tok.decode(&out, false));
}

/// Checks arguments against the two test schemas by hand.
fn check_arguments(call: &ToolCall) {
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    let args = args.as_object().unwrap();
    match call.name.as_str() {
        "get_weather" => {
            assert_eq!(args.len(), 2, "{args:?}");
            assert!(args["city"].as_str().unwrap().chars().count() <= 12, "{args:?}");
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()), "{args:?}");
        }
        "get_time" => {
            assert_eq!(args.len(), 2, "{args:?}");
            assert!(args["hour24"].is_boolean(), "{args:?}");
            // An integer as JSON spells it (`-0` reads as a float in serde_json).
            let offset = args["offset"].as_f64().unwrap();
            assert!(offset.fract() == 0.0 && (-12.0..=14.0).contains(&offset), "{args:?}");
            let raw = call.arguments.split("\"offset\":").nth(1).unwrap().split([',', '}']).next().unwrap();
            assert!(raw.chars().all(|c| c == '-' || c.is_ascii_digit()), "{}", call.arguments);
        }
        other => panic!("call to {other}"),
    }
}

#[test]
fn forced_calls_decode_into_valid_calls() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Generic] {
        for (choice, parallel) in [
            (json!("required"), false),
            (named.clone(), false),
            (json!("required"), true),
            (named.clone(), true),
        ] {
            let calling = calling(format, Some(choice.clone()), parallel);
            let constraint = calling.constraint().unwrap();
            let mut names = std::collections::BTreeSet::new();
            let mut most_calls = 0;
            for seed in 0..6 {
                let text = decode_random(&tok, &factory, &constraint, seed);
                let out = calling.parse(&text);
                let what = format!("{format} {choice} parallel={parallel}: {text:?}");
                assert_eq!(out.content, None, "{what}");
                assert!(!out.calls.is_empty(), "{what}");
                if !parallel || format == ToolFormat::Llama3Json {
                    assert_eq!(out.calls.len(), 1, "{what}");
                }
                match format {
                    ToolFormat::Llama3Json => assert!(text.starts_with("{\"name\": \""), "{what}"),
                    _ => assert!(text.starts_with("<tool_call>\n{\"name\": \""), "{what}"),
                }
                for call in &out.calls {
                    if choice.is_object() {
                        assert_eq!(call.name, "get_time", "{what}");
                    }
                    check_arguments(call);
                    names.insert(call.name.clone());
                }
                most_calls = most_calls.max(out.calls.len());
            }
            if choice == json!("required") {
                assert_eq!(names.len(), 2, "both tools should be called across seeds: {names:?}");
            }
            if parallel && format != ToolFormat::Llama3Json {
                assert!(most_calls > 1, "{format} {choice}: never more than one call");
            }
        }
    }
}

#[test]
fn forced_grammar_keeps_schema_refs_and_compiles() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let tools = parse_tools(&json!([{"type": "function", "function": {
        "name": "set_point",
        "description": "Braces } and \"quotes\" in text.",
        "parameters": {
            "type": "object",
            "$defs": {"coord": {"type": "integer", "minimum": 0, "maximum": 9}},
            "properties": {"x": {"$ref": "#/$defs/coord"}, "y": {"$ref": "#/$defs/coord"}},
            "required": ["x", "y"],
            "additionalProperties": false
        }
    }}]))
    .unwrap();
    let calling = ToolCalling::new(ToolFormat::Hermes, tools, ToolChoice::Required, false).unwrap();
    let constraint = calling.constraint().unwrap();
    let Constraint::Grammar(lark) = &constraint else { panic!("{constraint:?}") };
    assert!(lark.contains("%json"), "{lark}");
    for seed in 0..3 {
        let text = decode_random(&tok, &factory, &constraint, seed);
        let out = calling.parse(&text);
        assert_eq!(out.calls.len(), 1, "{text}");
        let args: Value = serde_json::from_str(&out.calls[0].arguments).unwrap();
        assert!(args["x"].as_i64().unwrap() <= 9 && args["y"].as_i64().unwrap() <= 9, "{text}");
    }
    // The constraint crosses JSON as `{"grammar": ...}`.
    let wire = serde_json::to_value(&constraint).unwrap();
    assert!(wire["grammar"].is_string());
}

// ------------------------------------------------------------------ parsing

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_string(), arguments.to_string())
}

fn calls_of(out: &ParsedOutput) -> Vec<(String, String)> {
    out.calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect()
}

#[test]
fn hermes_parse_splits_content_and_calls() {
    let calling = calling(ToolFormat::Hermes, None, true);
    let weather = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
    let out = calling.parse(&format!("Let me check.\n{weather}\n{weather}\nDone."));
    assert_eq!(out.content.as_deref(), Some("Let me check.\n\n\nDone."));
    let paris = call("get_weather", r#"{"city":"Paris","unit":"celsius"}"#);
    assert_eq!(calls_of(&out), vec![paris.clone(), paris.clone()]);
    let id = &out.calls[0].id;
    assert!(
        id.starts_with("call_") && id.len() == 29 && id[5..].chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_ne!(out.calls[0].id, out.calls[1].id);

    // Arguments as JSON text; no newlines inside the tags; missing arguments.
    let out = calling
        .parse("<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"offset\\\": 2}\"}</tool_call>");
    assert_eq!((out.content.clone(), calls_of(&out)), (None, vec![call("get_time", r#"{"offset":2}"#)]));
    let out = calling.parse("<tool_call>{\"name\": \"get_time\"}</tool_call>");
    assert_eq!(calls_of(&out), vec![call("get_time", "{}")]);

    // Malformed blocks and unknown tools stay content, verbatim.
    for text in [
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"offset\": }\n</tool_call>",
        "<tool_call>\n{\"name\": \"launch\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>{\"name\": \"get_time\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{\"name\": \"get_time\"} trailing</tool_call>",
        "a <tool not a call <tool_call and < more </tool_call> text <",
        "<tool_call>\n{\"name\": \"get_time\", \"argu",
    ] {
        let out = calling.parse(text);
        assert_eq!((out.content.as_deref(), out.calls.len()), (Some(text), 0), "{text}");
    }
    // An unclosed block whose JSON is complete is a call (cut before, or
    // inside, the closing tag).
    for tail in ["", "\n", "\n</tool", "</tool_call"] {
        let out = calling
            .parse(&format!("Sure.\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}{tail}"));
        assert_eq!(
            (out.content.as_deref(), calls_of(&out)),
            (Some("Sure."), vec![call("get_time", "{}")]),
            "{tail:?}"
        );
    }
    assert_eq!(calling.parse("  \n ").content, None);
    assert_eq!(calling.parse(""), ParsedOutput::default());
}

#[test]
fn llama_parse_reads_whole_replies() {
    let calling = calling(ToolFormat::Llama3Json, None, true);
    let out = calling.parse(
        " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}} \n",
    );
    assert_eq!(
        (out.content.clone(), calls_of(&out)),
        (None, vec![call("get_weather", r#"{"city":"Paris","unit":"celsius"}"#)])
    );
    let out = calling.parse("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}};");
    assert_eq!(calls_of(&out), vec![call("get_time", "{}"), call("get_weather", r#"{"city":"Rome"}"#)]);
    for text in [
        "The weather is {\"nice\"}",
        "{\"name\": \"get_time\", \"parameters\": {}} and then text",
        "{\"not\": \"a call\"}",
        "{\"name\": \"launch\", \"parameters\": {}}",
        "{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"launch\", \"parameters\": {}}",
        "<|python_ta",
        "<|python_tag|>",
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Par",
        "Sure: <tool_call>{\"name\": \"get_time\"}</tool_call>",
    ] {
        let out = calling.parse(text);
        assert_eq!((out.content.as_deref(), out.calls.len()), (Some(text), 0), "{text}");
    }
}

#[test]
fn arguments_keep_the_models_spelling() {
    let calling = calling(ToolFormat::Hermes, None, true);
    let args = r#"{"b": 1e5, "a": -0, "big": 123456789012345678901234567890, "s": "x \" } ]  y", "n": {"k": [1, {"z": "]"}, true, null]}}"#;
    let compact = r#"{"b":1e5,"a":-0,"big":123456789012345678901234567890,"s":"x \" } ]  y","n":{"k":[1,{"z":"]"},true,null]}}"#;
    // Arguments before the name, another member after, a duplicate key (the last wins, as in parsing).
    let text = format!("<tool_call>{{\"arguments\": {{\"old\": 1}}, \"name\": \"get_time\", \"arguments\" :\n {args} , \"x\": 2}}</tool_call>");
    assert_eq!(calls_of(&calling.parse(&text)), vec![call("get_time", compact)]);
    // Arguments as JSON text, with spaces inside.
    let text = r#"<tool_call>{"name": "get_time", "arguments": "{ \"a\" : [1, 2] }"}</tool_call>"#;
    assert_eq!(calls_of(&calling.parse(text)), vec![call("get_time", r#"{"a":[1,2]}"#)]);
    let llama = calling_llama();
    let text = format!("{{\"name\": \"get_time\", \"parameters\": {args}}}");
    assert_eq!(calls_of(&llama.parse(&text)), vec![call("get_time", compact)]);
}

// ---------------------------------------------------------------- streaming

/// Feeds `text` in random pieces; returns the events and checks that
/// content is released as early as the rules allow.
fn stream(calling: &ToolCalling, text: &str, rng: &mut ChaCha8Rng) -> Vec<ToolEvent> {
    let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    let mut cuts: Vec<usize> =
        (0..rng.random_range(0..8usize)).map(|_| bounds[rng.random_range(0..bounds.len())]).collect();
    cuts.push(0);
    cuts.push(text.len());
    cuts.sort_unstable();
    let mut parser = calling.stream_parser();
    let mut events = Vec::new();
    for pair in cuts.windows(2) {
        events.extend(parser.push(&text[pair[0]..pair[1]]));
    }
    events.extend(parser.finish());
    events
}

fn stream_texts() -> Vec<(ToolFormat, &'static str)> {
    let hermes = [
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nDone.",
        "<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"offset\\\": 2}\"}</tool_call><tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",
        "  <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"offset\": }\n</tool_call> after  ",
        "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>\n\n<tool_call>{\"name\": \"get_time\"}</tool_call>",
        "a <tool not a call <tool_call and < more </tool_call> text <",
        "héllo ✓ <tool_call>{\"name\":\"get_time\",\"arguments\":{\"tz\":\"日本 </tool\"}}</tool_call>  \n x \n ",
        "x\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_",
        "<tool_call>\n{\"name\": \"get_time\", \"argu",
        "<tool_call><tool_call>{\"name\": \"get_time\"}</tool_call>",
        "text </tool_call> <tool_call",
        "   \n ",
        "",
    ];
    let llama = [
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        " <|python_tag|>{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", \"arguments\": {}}\n",
        "The weather is {\"nice\"} today ",
        "{\"name\": \"get_time\", \"parameters\": {}} and then text",
        "  {\"not\": \"a call\"}",
        "<|python_ta",
        "<|pyth not a tag",
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Par",
        "\n\nplain ✓ text\n\n",
    ];
    let mut texts: Vec<(ToolFormat, &str)> = Vec::new();
    for t in hermes {
        texts.push((ToolFormat::Hermes, t));
        texts.push((ToolFormat::Generic, t));
        texts.push((ToolFormat::Llama3Json, t));
    }
    for t in llama {
        texts.push((ToolFormat::Llama3Json, t));
        texts.push((ToolFormat::Hermes, t));
    }
    texts
}

#[test]
fn streaming_agrees_with_parse_on_every_split() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (format, text) in stream_texts() {
        let calling = calling(format, None, true);
        let whole = calling.parse(text);
        for _ in 0..300 {
            let events = stream(&calling, text, &mut rng);
            let streamed = ParsedOutput::from_events(events.clone());
            assert_eq!(streamed.content, whole.content, "{format} {text:?}: {events:?}");
            assert_eq!(calls_of(&streamed), calls_of(&whole), "{format} {text:?}");
            // No empty content events, and no two in a row from one push.
            assert!(events.iter().all(|e| !matches!(e, ToolEvent::Content(t) if t.is_empty())), "{events:?}");
        }
    }
}

#[test]
fn streaming_releases_text_early_and_calls_when_complete() {
    let calling = calling(ToolFormat::Hermes, None, true);
    let mut parser = calling.stream_parser();
    assert_eq!(parser.push("  Hello"), vec![ToolEvent::Content("Hello".into())]);
    // Whitespace and a possible tag are held; plain text is not.
    assert_eq!(parser.push(" wor"), vec![ToolEvent::Content(" wor".into())]);
    assert_eq!(parser.push("ld \n<tool"), vec![ToolEvent::Content("ld".into())]);
    assert_eq!(parser.push("_call>\n{\"name\": \"get_time\", "), vec![]);
    let events = parser.push("\"arguments\": {}}\n</tool_call>\n");
    assert!(
        matches!(&events[..], [ToolEvent::Call(c)] if c.name == "get_time" && c.arguments == "{}"),
        "{events:?}"
    );
    assert_eq!(parser.push("<to"), vec![]);
    assert_eq!(parser.push("ys>"), vec![ToolEvent::Content(" \n\n<toys>".into())]);
    assert_eq!(parser.push("  "), vec![]);
    assert_eq!(parser.finish(), vec![]);
    // After finish it starts over.
    assert_eq!(parser.push(" again"), vec![ToolEvent::Content("again".into())]);

    let llama = calling_llama();
    let mut parser = llama.stream_parser();
    assert_eq!(parser.push("<|python"), vec![]);
    assert_eq!(parser.push("_tag|>{\"name\": \"get_time\""), vec![]);
    // Not a call after all: everything so far is released.
    assert_eq!(
        parser.push(", \"parameters\": {}} oops"),
        vec![ToolEvent::Content("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {}} oops".into())]
    );
    assert_eq!(parser.push(" more"), vec![ToolEvent::Content(" more".into())]);
    let mut parser = llama.stream_parser();
    assert_eq!(parser.push("Hi {"), vec![ToolEvent::Content("Hi {".into())]);
}

fn calling_llama() -> ToolCalling {
    calling(ToolFormat::Llama3Json, None, true)
}
