//! Structured output over the committed SmolLM2 tokenizer: masks of regex,
//! choice and JSON-schema constraints, decoding under random logits, and
//! constraints refused before anything runs.

use std::path::Path;

use ferrolm_core::sampling::constraint::MAX_SCHEMA_DEPTH;
use ferrolm_core::sampling::{Constraint, ConstraintFactory, Sampler, SamplingConfig};
use ferrolm_core::{Error, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// SmolLM2's logits are as wide as its vocabulary.
const VOCAB: usize = 49152;

fn smollm2() -> Tokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers/smollm2");
    Tokenizer::from_pretrained(dir).unwrap()
}

/// The token ids a mask leaves finite.
fn allowed(matcher: &mut ferrolm_core::sampling::ConstraintMatcher, width: usize) -> Vec<u32> {
    let mut logits = vec![0.0f32; width];
    matcher.mask(&mut logits).unwrap();
    (0..width as u32).filter(|&t| logits[t as usize].is_finite()).collect()
}

/// Greedy decoding under `constraint` with random logits (every allowed
/// token equally likely to win), until an end-of-sequence token.
fn decode_random(tok: &Tokenizer, factory: &ConstraintFactory, constraint: Constraint, seed: u64) -> String {
    let config = SamplingConfig { constraint: Some(constraint.clone()), ..SamplingConfig::greedy(400) };
    let mut sampler = Sampler::new(config, 0).unwrap();
    sampler.constrain(factory.compile(&constraint).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..400 {
        let logits: Vec<f32> = (0..factory.vocab_size()).map(|_| rng.random::<f32>()).collect();
        let token = sampler.sample(&logits, &out).unwrap().token;
        if tok.eos_ids().contains(&token) {
            return tok.decode(&out, false).unwrap();
        }
        out.push(token);
    }
    panic!("no end-of-sequence within 400 tokens: {:?}", tok.decode(&out, false));
}

#[test]
fn token_bytes_agree_with_llguidance() {
    let tok = smollm2();
    let json: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tokenizers/smollm2/tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(tok.token_bytes().unwrap(), llguidance::token_bytes_from_tokenizer_json(&json).unwrap());
}

#[test]
fn regex_allows_digits_then_only_eos() {
    let tok = smollm2();
    // Wider than the vocabulary: the padding ids are never allowed.
    let factory = ConstraintFactory::new(&tok, VOCAB + 16).unwrap();
    let bytes = tok.token_bytes().unwrap();
    let mut m = factory.compile(&Constraint::Regex("[0-9]{3}".into())).unwrap();

    let first = allowed(&mut m, VOCAB + 16);
    assert!(!first.is_empty());
    for &t in &first {
        let b = &bytes[t as usize];
        assert!(!b.is_empty() && b.len() <= 3 && b.iter().all(u8::is_ascii_digit), "token {t}: {b:?}");
    }
    let digits = tok.encode("123", false).unwrap();
    assert_eq!(tok.decode(&digits, false).unwrap(), "123");
    for &t in &digits {
        assert!(allowed(&mut m, VOCAB + 16).contains(&t));
        m.commit(t).unwrap();
    }
    let last = allowed(&mut m, VOCAB + 16);
    assert!(!last.is_empty());
    assert!(last.iter().all(|t| tok.eos_ids().contains(t)), "{last:?}");
}

#[test]
fn choice_forces_one_of_them() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let choice = Constraint::Choice(vec!["yes".into(), "no".into()]);
    let mut seen = Vec::new();
    for seed in 0..8 {
        let text = decode_random(&tok, &factory, choice.clone(), seed);
        assert!(text == "yes" || text == "no", "{text:?}");
        seen.push(text);
    }
    assert!(seen.iter().any(|t| t == "yes") && seen.iter().any(|t| t == "no"), "{seen:?}");
}

#[test]
fn json_schema_under_random_logits_parses_and_matches() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pet": {"enum": ["cat", "dog"]},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "pet", "ok"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    });
    for seed in 0..4 {
        let text = decode_random(&tok, &factory, Constraint::JsonSchema(schema.clone()), seed);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 4, "{text}");
        assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 8), "{text}");
        assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{text}");
        assert!(o["pet"] == "cat" || o["pet"] == "dog", "{text}");
        assert!(o["ok"].is_boolean(), "{text}");
    }
    // Any object: random logits would fill its strings forever, so only
    // the first step is checked (an object opens, after optional whitespace).
    let bytes = tok.token_bytes().unwrap();
    let mut m = factory.compile(&Constraint::json_object()).unwrap();
    let first = allowed(&mut m, VOCAB);
    assert!(first.iter().any(|&t| bytes[t as usize] == b"{"));
    for t in first {
        let b = bytes[t as usize].trim_ascii_start();
        assert!(b.is_empty() || b[0] == b'{', "token {t}: {:?}", String::from_utf8_lossy(b));
    }
}

#[test]
fn bad_constraints_are_config_errors_naming_the_problem() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    for (c, kind) in [
        (Constraint::Regex("[0-9".into()), "regex"),
        (Constraint::JsonSchema(json!({"type": "nonsense"})), "json_schema"),
        (Constraint::Grammar("start: undefined_rule".into()), "grammar"),
        (Constraint::Choice(vec![]), "choice"),
    ] {
        match factory.compile(&c) {
            Err(Error::InvalidConfig { field, reason }) => {
                assert_eq!(field, "constraint");
                assert!(reason.contains(kind), "{reason}");
            }
            other => panic!("{c:?}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn sampling_config_reads_constraints_as_json() {
    let c = SamplingConfig::from_json(r#"{"constraint": {"regex": "a+"}}"#).unwrap();
    assert_eq!(c.constraint, Some(Constraint::Regex("a+".into())));
    assert_eq!(SamplingConfig::default().constraint, None);
    let schema = r#"{"constraint": {"json_schema": {"type": "object"}}}"#;
    assert_eq!(SamplingConfig::from_json(schema).unwrap().constraint, Some(Constraint::json_object()));
    let back: SamplingConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    for bad in [r#"{"constraint": {"regexp": "a"}}"#, r#"{"constraint": {"choice": []}}"#] {
        assert!(SamplingConfig::from_json(bad).is_err(), "{bad}");
    }
}

#[test]
fn schemas_nested_past_the_bound_are_refused_before_compiling() {
    // llguidance compiles schemas by recursion: two thousand levels would
    // overflow the stack, so nesting is bounded first.
    let nested = |levels: usize| {
        (0..levels).fold(json!({"type": "integer"}), |inner, _| json!({"type": "array", "items": inner}))
    };
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let ok = Constraint::JsonSchema(nested(MAX_SCHEMA_DEPTH - 1));
    assert!(factory.compile(&ok).is_ok());
    for levels in [MAX_SCHEMA_DEPTH, 1000] {
        let deep = Constraint::JsonSchema(nested(levels));
        let err = factory.compile(&deep).unwrap_err().to_string();
        assert!(err.contains("nested deeper than 128 levels"), "{err}");
        let config = SamplingConfig { constraint: Some(deep), ..SamplingConfig::greedy(4) };
        assert!(config.validate().unwrap_err().to_string().contains("nested deeper"));
    }
}
