//! Tokenizers against HF: encode/decode of the committed corpus, GGUF
//! vocabularies against `AutoTokenizer(gguf_file=...)`, streaming decode,
//! chat templates against `apply_chat_template`. The expectations come from
//! `tests/fixtures/make_tokenizer_fixtures.py`; no Python runs here.
//!
//! The SmolLM2 GGUF itself (98 MB, not committed) is checked when
//! `FERROLM_SMOLLM2_GGUF` points to it.

use std::path::{Path, PathBuf};

use ferrolm_core::tokenizer::{
    BatchOptions, ChatMessage, ChatTemplate, GgufVocab, Padding, StreamDecoder, Tokenizer,
};
use ferrolm_core::Error;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn id_list(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Checks a tokenizer against an `expected.json` (ids, decodes, vocab size).
fn check_expected(tok: &Tokenizer, expected: &Value, what: &str) {
    assert_eq!(tok.vocab_size() as u64, expected["vocab_size"].as_u64().unwrap(), "{what}: vocab size");
    let mut failures = Vec::new();
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let with = tok.encode(text, true).unwrap();
        let without = tok.encode(text, false).unwrap();
        if with != id_list(&case["ids"]) {
            failures.push(format!("encode({text:?}, true): {with:?} != {:?}", id_list(&case["ids"])));
        }
        if without != id_list(&case["ids_no_special"]) {
            failures.push(format!(
                "encode({text:?}, false): {without:?} != {:?}",
                id_list(&case["ids_no_special"])
            ));
        }
        let ids = id_list(&case["ids"]);
        for (skip, key) in [(true, "decode"), (false, "decode_keep_special")] {
            let got = tok.decode(&ids, skip).unwrap();
            if got != case[key].as_str().unwrap() {
                failures.push(format!("decode({ids:?}, {skip}): {got:?} != {:?}", case[key]));
            }
        }
    }
    for case in expected["decodes"].as_array().unwrap() {
        let ids = id_list(&case["ids"]);
        for (skip, key) in [(true, "decode"), (false, "decode_keep_special")] {
            let got = tok.decode(&ids, skip).unwrap();
            if got != case[key].as_str().unwrap() {
                failures.push(format!("decode({ids:?}, {skip}): {got:?} != {:?}", case[key]));
            }
        }
    }
    assert!(failures.is_empty(), "{what}: {} mismatches with HF:\n{}", failures.len(), failures.join("\n"));
}

/// The parts of two serialized tokenizers that decide encode/decode.
fn assert_same_structure(ours: &Tokenizer, hf_json: &Path) {
    let ours: Value = serde_json::from_str(&ours.inner().to_string(false).unwrap()).unwrap();
    let hf = read_json(hf_json);
    for key in ["normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"] {
        assert_eq!(ours[key], hf[key], "{}: `{key}` differs from HF's", hf_json.display());
    }
    for key in ["type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk"]
    {
        assert_eq!(ours["model"][key], hf["model"][key], "{}: model.{key}", hf_json.display());
    }
    for key in ["byte_fallback", "ignore_merges", "vocab", "merges"] {
        assert_eq!(ours["model"][key], hf["model"][key], "{}: model.{key}", hf_json.display());
    }
}

fn smollm2_json() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("smollm2/tokenizer.json")).unwrap()
}

const GGUF_FIXTURES: [&str; 7] =
    ["bpe-gpt2", "bpe-smollm", "bpe-llama-bpe", "bpe-qwen2", "bpe-nopre", "llama-sp", "llama-sp-noprefix"];

// --- tokenizer.json --------------------------------------------------------------

#[test]
fn tokenizer_json_matches_hf_tokenizers() {
    let expected = read_json(&fixtures().join("smollm2/expected.json"));
    check_expected(&smollm2_json(), &expected, "smollm2 tokenizer.json");
}

#[test]
fn hf_converted_gguf_tokenizer_jsons_match_hf() {
    // HF's own conversions, loaded as plain tokenizer.json files.
    for name in GGUF_FIXTURES {
        let dir = fixtures().join("gguf");
        let tok = Tokenizer::from_file(dir.join(format!("{name}.tokenizer.json"))).unwrap();
        check_expected(&tok, &read_json(&dir.join(format!("{name}.expected.json"))), name);
    }
}

#[test]
fn from_pretrained_reads_config_and_template() {
    let tok = Tokenizer::from_pretrained(fixtures().join("smollm2")).unwrap();
    assert_eq!(tok.bos_id(), Some(1)); // <|im_start|>
    assert_eq!(tok.eos_id(), Some(2)); // <|im_end|>
    assert_eq!(tok.eos_ids(), &[2, 0]); // + <|endoftext|>
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.vocab_size(), 49152);
    let names: Vec<_> = tok.special_tokens().iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        names,
        ["bos_token=<|im_start|>", "eos_token=<|im_end|>", "unk_token=<|endoftext|>", "pad_token=<|im_end|>"]
    );
    let template = std::fs::read_to_string(fixtures().join("smollm2/chat_template.jinja")).unwrap();
    assert_eq!(tok.chat_template().unwrap().source(), template);
    let prompt = tok.apply_chat_template(&[ChatMessage::user("Hi")], true, &Value::Null).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // from_file reads only tokenizer.json: no bos/pad/template, eos from the end-of-generation names.
    let plain = smollm2_json();
    assert_eq!(
        (plain.bos_id(), plain.eos_ids(), plain.chat_template().is_none()),
        (None, &[2u32, 0][..], true)
    );
    assert_eq!(plain.pad_id(), Some(2));
}

#[test]
fn from_pretrained_applies_config_flags_and_generation_eos() {
    let dir = std::env::temp_dir().join(format!("ferrolm-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("gguf/llama-sp.tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "special": true},
        "eos_token": "</s>",
        "pad_token": "<pad-not-in-vocab>",
        "add_bos_token": false,
        "add_eos_token": true,
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ eos_token }}"}],
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [2, 5]}"#).unwrap();
    let tok = Tokenizer::from_pretrained(&dir).unwrap();
    let plain = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let body = plain.encode("hello", false).unwrap();
    assert_eq!(plain.encode("hello", true).unwrap()[0], 1, "tokenizer.json adds bos");
    assert_eq!(tok.encode("hello", true).unwrap(), [body, vec![2]].concat(), "config: no bos, eos");
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(tok.eos_ids(), &[2, 5, im_end]);
    assert_eq!((tok.bos_id(), tok.pad_id()), (Some(1), Some(2)), "unknown pad token falls back to eos");
    assert_eq!(tok.apply_chat_template(&[], false, &Value::Null).unwrap(), "</s>");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_say_what_is_wrong() {
    let missing = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    let missing = Tokenizer::from_pretrained("/nonexistent/model").unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    let missing = Tokenizer::from_gguf("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    let bad = Tokenizer::from_json_bytes(b"{\"not\": \"a tokenizer\"}").unwrap_err();
    assert!(matches!(bad, Error::InvalidTokenizer(_)), "{bad}");

    let tok = smollm2_json();
    let err = tok.decode(&[1, 49152], true).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)) && err.to_string().contains("49152"), "{err}");
    let err = tok.stream_decoder(true).push(1 << 30).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = tok.apply_chat_template(&[ChatMessage::user("x")], true, &Value::Null).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn batch_padding_and_truncation() {
    let tok = Tokenizer::from_gguf(fixtures().join("gguf/llama-sp.gguf")).unwrap();
    let texts = ["Hello world, hello there!", "Hi"];
    let full = tok.encode_batch(&texts, true).unwrap();
    assert_eq!(full[0], tok.encode(texts[0], true).unwrap());
    assert_eq!(full[0][0], 1, "bos is added");

    let opts = BatchOptions { add_special_tokens: true, padding: Padding::Longest, ..Default::default() };
    let batch = tok.encode_batch_padded(&texts, &opts).unwrap();
    let n = full[0].len();
    assert_eq!(batch.input_ids[0], full[0]);
    assert_eq!(&batch.input_ids[1][..full[1].len()], &full[1][..]);
    assert!(batch.input_ids[1][full[1].len()..].iter().all(|&t| t == 2), "padded with eos (no pad token)");
    assert_eq!(batch.attention_mask[1].iter().sum::<u32>() as usize, full[1].len());
    assert!(batch.input_ids.iter().all(|s| s.len() == n));

    let opts = BatchOptions { pad_left: true, ..opts };
    let left = tok.encode_batch_padded(&texts, &opts).unwrap();
    assert_eq!(&left.input_ids[1][n - full[1].len()..], &full[1][..]);
    assert_eq!(left.attention_mask[1][0], 0);

    let opts = BatchOptions {
        add_special_tokens: true,
        padding: Padding::MaxLength,
        max_length: Some(4),
        truncate: true,
        pad_left: false,
    };
    let cut = tok.encode_batch_padded(&texts, &opts).unwrap();
    assert_eq!(cut.input_ids[0], full[0][..4].to_vec(), "truncation keeps bos");
    assert!(cut.input_ids.iter().all(|s| s.len() == 4));

    let ragged = tok.encode_batch_padded(&texts, &BatchOptions::default()).unwrap();
    assert_eq!(ragged.input_ids[1], tok.encode(texts[1], false).unwrap());
    let err = tok
        .encode_batch_padded(&texts, &BatchOptions { padding: Padding::MaxLength, ..Default::default() })
        .unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
}

// --- GGUF vocabularies -----------------------------------------------------------

#[test]
fn gguf_vocabularies_match_hf_auto_tokenizer() {
    for name in GGUF_FIXTURES {
        let dir = fixtures().join("gguf");
        let tok = Tokenizer::from_gguf(dir.join(format!("{name}.gguf"))).unwrap();
        check_expected(&tok, &read_json(&dir.join(format!("{name}.expected.json"))), name);
        assert_same_structure(&tok, &dir.join(format!("{name}.tokenizer.json")));
    }
}

#[test]
fn gguf_special_ids() {
    let dir = fixtures().join("gguf");
    let sp = Tokenizer::from_gguf(dir.join("llama-sp.gguf")).unwrap();
    assert_eq!((sp.bos_id(), sp.eos_id(), sp.pad_id()), (Some(1), Some(2), Some(2)));
    let im_end = sp.token_to_id("<|im_end|>").unwrap();
    assert_eq!(sp.eos_ids(), &[2, im_end]);
    assert!(sp.is_special(im_end) && !sp.is_special(sp.token_to_id("<think>").unwrap()));
    assert!(sp.chat_template().is_none());

    let bpe = Tokenizer::from_gguf(dir.join("bpe-qwen2.gguf")).unwrap();
    let endoftext = bpe.token_to_id("<|endoftext|>").unwrap();
    let im_end = bpe.token_to_id("<|im_end|>").unwrap();
    assert_eq!(bpe.eos_ids(), &[im_end, endoftext]);
    let prompt = bpe.apply_chat_template(&[ChatMessage::user("hi")], false, &Value::Null).unwrap();
    assert_eq!(prompt, "<|im_start|>user\nhi<|im_end|>\n");
}

fn vocab(model: &str, pre: Option<&str>) -> GgufVocab {
    GgufVocab {
        model: model.into(),
        pre: pre.map(str::to_string),
        tokens: ["a", "b", "ab", "<s>"].map(str::to_string).to_vec(),
        token_types: vec![1, 1, 1, 3],
        scores: vec![0.0, 0.0, -1.0, 0.0],
        merges: vec!["a b".into()],
        bos: Some(3),
        ..Default::default()
    }
}

#[test]
fn gguf_vocab_errors() {
    let err = Tokenizer::from_gguf_vocab(&vocab("gpt2", Some("made-up"))).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("made-up") && err.to_string().contains("llama-bpe"), "{err}");
    let err = Tokenizer::from_gguf_vocab(&vocab("t5", None)).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains("`t5`"), "{err}");
    let err = Tokenizer::from_gguf_vocab(&GgufVocab { eos: Some(9), ..vocab("gpt2", None) }).unwrap_err();
    assert!(matches!(err, Error::InvalidTokenizer(_)) && err.to_string().contains("eos_token_id"), "{err}");
    let err = Tokenizer::from_gguf_vocab(&GgufVocab { merges: vec!["a".into()], ..vocab("gpt2", None) })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTokenizer(_)), "{err}");
    let err = Tokenizer::from_gguf_vocab(&GgufVocab { tokens: vec![], ..vocab("gpt2", None) }).unwrap_err();
    assert!(matches!(err, Error::InvalidTokenizer(_)), "{err}");

    // A SentencePiece vocabulary without merges gets them from the scores.
    let sp = Tokenizer::from_gguf_vocab(&GgufVocab { merges: vec![], ..vocab("llama", None) }).unwrap();
    assert_eq!(sp.encode("ab", false).unwrap(), [2]);
    let gpt2 = Tokenizer::from_gguf_vocab(&vocab("gpt2", Some("qwen2"))).unwrap();
    assert_eq!(gpt2.encode("ab<s>", false).unwrap(), [2, 3]);
}

/// The real SmolLM2 GGUF against HF's conversion of it (committed as tokenizer.json).
#[test]
fn smollm2_gguf_matches_hf() {
    let Some(path) = std::env::var_os("FERROLM_SMOLLM2_GGUF") else {
        eprintln!("skipped: set FERROLM_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run");
        return;
    };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    check_expected(&tok, &read_json(&fixtures().join("smollm2/expected.json")), "smollm2 GGUF");
    assert_same_structure(&tok, &fixtures().join("smollm2/tokenizer.json"));
    assert_eq!((tok.bos_id(), tok.eos_ids(), tok.pad_id()), (Some(1), &[2u32, 0][..], Some(2)));
    let template = std::fs::read_to_string(fixtures().join("smollm2/chat_template.jinja")).unwrap();
    assert_eq!(tok.chat_template().unwrap().source(), template);
    let via_dir = Tokenizer::from_pretrained(&path).unwrap();
    assert_eq!(via_dir.encode("Hello 🦀", true).unwrap(), tok.encode("Hello 🦀", true).unwrap());
}

// --- streaming -------------------------------------------------------------------

fn stream_all(stream: &mut StreamDecoder, ids: &[u32]) -> (String, Vec<String>) {
    let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    pieces.push(stream.flush().unwrap());
    (pieces.concat(), pieces)
}

/// Streams every corpus text; returns how many texts had a token that is not valid UTF-8 alone.
fn check_stream(tok: &Tokenizer, what: &str) -> usize {
    let corpus: Vec<String> = serde_json::from_value(read_json(&fixtures().join("corpus.json"))).unwrap();
    let mut split_chars = 0;
    for text in &corpus {
        for add_special in [true, false] {
            let ids = tok.encode(text, add_special).unwrap();
            if ids.iter().any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}')) {
                split_chars += 1;
            }
            for skip in [true, false] {
                let full = tok.decode(&ids, skip).unwrap();
                let mut stream = tok.stream_decoder(skip);
                let (joined, pieces) = stream_all(&mut stream, &ids);
                assert_eq!(joined, full, "{what}: stream of {text:?} (skip={skip}) pieces {pieces:?}");
                if !full.contains('\u{FFFD}') {
                    assert!(
                        pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                        "{what}: half a character in {pieces:?}"
                    );
                }
            }
        }
    }
    split_chars
}

#[test]
fn streaming_byte_level_never_splits_characters() {
    let tok = smollm2_json();
    assert!(check_stream(&tok, "smollm2") > 0, "the corpus must split characters across tokens");
    // "🦀" is four bytes spread over several byte-level tokens: nothing comes out until the last.
    let ids = tok.encode("🦀", false).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let mut stream = tok.stream_decoder(true);
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(stream.push(id).unwrap(), "");
    }
    assert_eq!(stream.push(ids[ids.len() - 1]).unwrap(), "🦀");
    assert_eq!(stream.flush().unwrap(), "");

    // Arbitrary id sequences (invalid UTF-8 in the middle included) still concatenate to decode.
    let expected = read_json(&fixtures().join("smollm2/expected.json"));
    for case in expected["decodes"].as_array().unwrap() {
        let ids = id_list(&case["ids"]);
        for skip in [true, false] {
            let (joined, _) = stream_all(&mut tok.stream_decoder(skip), &ids);
            assert_eq!(joined, tok.decode(&ids, skip).unwrap(), "{ids:?}");
        }
    }
}

#[test]
fn streaming_byte_fallback_never_splits_characters() {
    let dir = fixtures().join("gguf");
    for name in ["llama-sp", "llama-sp-noprefix"] {
        let tok = Tokenizer::from_gguf(dir.join(format!("{name}.gguf"))).unwrap();
        assert!(check_stream(&tok, name) > 0, "{name}: the corpus must use byte-fallback tokens");
        // 日 is not in the vocabulary: three <0xNN> tokens, one character out.
        let ids = tok.encode("x日", false).unwrap();
        let mut stream = tok.stream_decoder(true);
        let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(pieces.concat() + &stream.flush().unwrap(), tok.decode(&ids, true).unwrap());
        assert_eq!(pieces.last().unwrap(), "日", "{name}: {pieces:?}");
    }
    for name in ["bpe-llama-bpe", "bpe-qwen2"] {
        let tok = Tokenizer::from_gguf(dir.join(format!("{name}.gguf"))).unwrap();
        check_stream(&tok, name);
    }
}

#[test]
fn stream_decoder_resets_after_flush() {
    let tok = smollm2_json();
    let mut stream = tok.stream_decoder(false);
    let first = tok.encode("<|im_start|>assistant\nBonjour 🦀", false).unwrap();
    let (joined, _) = stream_all(&mut stream, &first);
    assert_eq!(joined, "<|im_start|>assistant\nBonjour 🦀");
    let second = tok.encode("encore", false).unwrap();
    assert_eq!(stream_all(&mut stream, &second).0, "encore");
    assert!(stream.pending().is_empty());
}

// --- chat templates --------------------------------------------------------------

#[test]
fn chat_templates_match_hf_apply_chat_template() {
    let templates = read_json(&fixtures().join("chat/templates.json"));
    let cases = read_json(&fixtures().join("chat/cases.json"));
    let mut failures = Vec::new();
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let name = case["template"].as_str().unwrap();
        let specials: Vec<(String, String)> = case["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let template = ChatTemplate::new(templates[name]["source"].as_str().unwrap())
            .unwrap()
            .with_special_tokens(specials);
        let got = template.render_json(
            case["messages_json"].as_str().unwrap(),
            case["add_generation_prompt"].as_bool().unwrap(),
            Some(case["kwargs_json"].as_str().unwrap()),
        );
        let label = format!("case {i} ({name}, {}, {})", case["conversation"], case["kwargs_json"]);
        match (got, case.get("expected"), case.get("error")) {
            (Ok(text), Some(want), _) => {
                let want = want.as_str().unwrap();
                let ok = match want.split_once("{{TODAY}}") {
                    Some((before, after)) => {
                        text.starts_with(before)
                            && text.ends_with(after)
                            && is_day_month_year(&text[before.len()..text.len() - after.len()])
                    }
                    None => text == want,
                };
                if !ok {
                    failures.push(format!("{label}:\n--- ours\n{text}\n--- HF\n{want}"));
                }
            }
            (Err(err), _, Some(want)) => {
                let want = want.as_str().unwrap();
                if !err.to_string().contains(want) || !matches!(err, Error::InvalidInput(_)) {
                    failures.push(format!("{label}: error {err} does not carry {want:?}"));
                }
            }
            (got, ..) => failures.push(format!("{label}: got {got:?}, HF: {case}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} renderings differ:\n{}",
        failures.len(),
        cases.as_array().unwrap().len(),
        failures.join("\n\n")
    );
}

/// "26 Jul 2024"-shaped (the `strftime_now("%d %b %Y")` of the Llama 3.2 template).
fn is_day_month_year(s: &str) -> bool {
    let parts: Vec<&str> = s.split(' ').collect();
    parts.len() == 3
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_digit())
        && ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .contains(&parts[1])
        && parts[2].len() == 4
}

#[test]
fn chat_template_extras() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.role | upper }}:{{ m.content.strip() }}|{% endfor %}\
         {{ x | tojson }}|{{ y | tojson(indent=2) }}|{{ 'a,b'.split(',') | tojson(separators=[',', '=']) }}\
         {% if add_generation_prompt %}>{% endif %}{% if tools is none and documents is none %}!{% endif %}",
    )
    .unwrap()
    .with_special_tokens([("bos_token", "<s>")]);
    let out = t
        .render(
            &[ChatMessage::system("  be brief "), ChatMessage::user("hi\n")],
            true,
            &serde_json::json!({"x": {"é": [1, 2.5, null, true]}, "y": [1, {"k": "v"}]}),
        )
        .unwrap();
    assert_eq!(out, "<s>SYSTEM:be brief|USER:hi|{\"é\": [1, 2.5, null, true]}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]|[\"a\",\"b\"]>!");

    // Key order of JSON input is kept; ensure_ascii and sort_keys work.
    let t = ChatTemplate::new(
        "{{ messages[0].meta | tojson }} {{ messages[0].meta | tojson(ensure_ascii=true, sort_keys=true) }}",
    )
    .unwrap();
    let out = t
        .render_json(r#"[{"role": "user", "content": "", "meta": {"z": "日", "a": "🦀"}}]"#, false, None)
        .unwrap();
    assert_eq!(out, r#"{"z": "日", "a": "🦀"} {"a": "\ud83e\udd80", "z": "\u65e5"}"#);

    // raise_exception surfaces the template's own message.
    let t = ChatTemplate::new("{{ raise_exception('Roles must alternate') }}").unwrap();
    let err = t.render(&[], false, &Value::Null).unwrap_err();
    assert_eq!(err.to_string(), "the chat template rejected the conversation: Roles must alternate");

    // Reasoning fields are aliased as HF does; `{% generation %}` renders its body.
    let t = ChatTemplate::new("{% for m in messages %}{% generation %}[{{ m.thinking }}|{{ m.reasoning_content }}]{% endgeneration %}{% endfor %}").unwrap();
    let out = t
        .render_json(
            r#"[{"role": "assistant", "content": "x", "reasoning": "r"}, {"role": "user", "content": "y"}]"#,
            false,
            None,
        )
        .unwrap();
    assert_eq!(out, "[r|r][|]");

    // Loop controls, namespace, Python methods.
    let t = ChatTemplate::new(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}\
         {% set ns.n = ns.n + 1 %}{{ m.content.startswith('a') }}{{ m.content.replace('a', 'b') }}{% endfor %}{{ ns.n }}\
         {{ strftime_now('%Y') | length }}",
    )
    .unwrap();
    let out = t.render(&[ChatMessage::user("abc"), ChatMessage::user("x")], false, &Value::Null).unwrap();
    assert_eq!(out, "Truebbc14"); // Jinja2 prints Python booleans

    let err = ChatTemplate::new("{% if %}").unwrap_err();
    assert!(matches!(err, Error::InvalidTokenizer(_)), "{err}");
    let err = t.render_json("{\"role\": \"user\"}", false, None).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

/// Found by the `tokenizer_json` fuzz target: `tokenizers` panicked (an
/// `expect` in its decoder deserializer) when the JSON text of `decoder` was
/// malformed, instead of returning an error as it does elsewhere in the file.
#[test]
fn malformed_json_inside_the_decoder_is_an_error() {
    let hf = fixtures().join("gguf/bpe-gpt2.tokenizer.json");
    let text = std::fs::read_to_string(&hf).unwrap();
    let at = text.find("\"decoder\"").expect("the fixture has a decoder");
    for cut in ["\"decoder\": {\"type\": }", "\"decoder\": {\"type\" \"ByteLevel\"}", "\"decoder\": {3: 4}"] {
        let broken = format!("{}{cut}}}", &text[..at]);
        let err = Tokenizer::from_json_bytes(broken.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::InvalidTokenizer(_)), "{cut}: {err}");
    }
    // The same file intact still loads.
    Tokenizer::from_json_bytes(text.as_bytes()).unwrap();
}

/// `tokenizers` panics on a damaged `Precompiled` normalizer (an `expect`
/// on its charsmap, and unchecked indexing into it in `spm_precompiled`
/// when encoding); ferrolm refuses the normalizer, which no family it runs uses.
#[test]
fn a_precompiled_normalizer_is_refused() {
    let hf = fixtures().join("gguf/llama-sp.tokenizer.json");
    let mut json = read_json(&hf);
    for charsmap in ["AAAA", "AAAAAAAAAAAAAAAA", "BAAAAP////8AAAAA", "CAAAAAEAAAACAAAAYWI="] {
        let precompiled = serde_json::json!({"type": "Precompiled", "precompiled_charsmap": charsmap});
        for normalizer in
            [precompiled.clone(), serde_json::json!({"type": "Sequence", "normalizers": [precompiled]})]
        {
            json["normalizer"] = normalizer;
            let err = Tokenizer::from_json_bytes(json.to_string().as_bytes()).unwrap_err();
            assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains("Precompiled"), "{err}");
        }
    }
}

/// Found by the `gguf_vocab` fuzz target: merges recovered from SentencePiece
/// scores were sorted by a comparison that is no total order when a score is
/// NaN, and the sort panicked. A NaN score is now an error naming the token.
#[test]
fn a_nan_score_is_an_error_not_a_panic() {
    let letters: Vec<String> = ('a'..='p').map(String::from).collect();
    let mut tokens = letters.clone();
    for l in &letters {
        tokens.extend(letters.iter().map(|r| format!("{l}{r}")));
    }
    let scores = (0..tokens.len()).map(|i| if i % 3 == 0 { f32::NAN } else { -(i as f32) }).collect();
    let vocab = GgufVocab { model: "llama".into(), tokens, scores, ..GgufVocab::default() };
    let built = std::panic::catch_unwind(|| vocab.build()).expect("no panic");
    let Err(err) = built else { panic!("a NaN score must be refused") };
    let err = err.to_string();
    assert!(err.contains("tokenizer.ggml.scores") && err.contains("NaN"), "{err}");
}
