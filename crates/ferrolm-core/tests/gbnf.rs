//! GBNF constraints over the committed SmolLM2 tokenizer: grammars written
//! both in llguidance's Lark and in llama.cpp's GBNF accept each other's
//! sampled strings and refuse the same strangers, and bad GBNF is
//! refused before anything runs.

use std::path::Path;

use ferrolm_core::sampling::{Constraint, ConstraintFactory, Sampler, SamplingConfig};
use ferrolm_core::{Error, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SmolLM2's logits are as wide as its vocabulary.
const VOCAB: usize = 49152;

fn smollm2() -> Tokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers/smollm2");
    Tokenizer::from_pretrained(dir).unwrap()
}

/// One language twice: a Lark grammar (with real terminals, as one would
/// write it by hand) and a GBNF grammar, the strings that drive sampling
/// towards an end, and strings outside the language.
struct Pair {
    name: &'static str,
    lark: &'static str,
    gbnf: &'static str,
    closers: &'static [&'static str],
    members: &'static [&'static str],
    strangers: &'static [&'static str],
}

/// llama.cpp's grammars/json.gbnf (MIT licence, the llama.cpp authors).
const JSON_GBNF: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

const PAIRS: &[Pair] = &[
    Pair {
        name: "arithmetic",
        lark: r#"
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUM | "(" expr ")"
NUM: /[0-9]+/
"#,
        gbnf: r#"
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= num | "(" expr ")"
num    ::= [0-9]+
"#,
        closers: &[")", "1"],
        members: &["1", "12+3*(4-5)/6", "((7))"],
        strangers: &["", "1+", "(1", "1)", "+1", "1 + 2", "a"],
    },
    Pair {
        name: "quoted list",
        lark: r#"
start: "[" (ITEM ("," " "? ITEM)*)? "]"
ITEM: /"[^"\\\n]*"/
"#,
        gbnf: r#"
root ::= "[" (item ("," " "? item)*)? "]"
item ::= "\"" [^"\\\n]* "\""
"#,
        closers: &["\"", "]"],
        members: &["[]", r#"["a"]"#, r#"["", "b c","d"]"#],
        strangers: &["[", r#"["a" "b"]"#, "[a]", r#"["a",]"#, r#"["a\"]"#, r#"["a"]]"#],
    },
    Pair {
        name: "llama.cpp json.gbnf",
        lark: r#"
start: object
value: object | array | STRING ws | NUMBER ws | ("true" | "false" | "null") ws
object: "{" ws (STRING ws ":" ws value ("," ws STRING ws ":" ws value)*)? "}" ws
array: "[" ws (value ("," ws value)*)? "]" ws
ws: "" | " " | NL
NL: /\n[ \t]{0,20}/
STRING: /"([^"\\\x7F\x00-\x1F]|\\(["\\bfnrt]|u[0-9a-fA-F]{4}))*"/
NUMBER: /-?([0-9]|[1-9][0-9]{0,15})(\.[0-9]+)?([eE][-+]?[0-9][1-9]{0,15})?/
"#,
        gbnf: JSON_GBNF,
        closers: &["\"", "}", "]", "0"],
        members: &["{}", r#"{"a": [1, -2.5e3, true, null, {"b": "\u00e9\n"}]}"#, "{\n\t\"x\":\"y\" } "],
        strangers: &["", "[]", "{", r#"{"a"}"#, r#"{"a":01}"#, r#"{'a':1}"#, "{}  ", r#"{"a":"\x"}"#],
    },
    Pair {
        name: "date and time",
        lark: r#"
start: DATE ("T" TIME)?
DATE: /[0-9]{4}-[0-9]{2}-[0-9]{2}/
TIME: /[0-9]{2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?/
"#,
        gbnf: r#"
root ::= date ("T" time)?
date ::= [0-9]{4} "-" [0-9]{2} "-" [0-9]{2}
time ::= [0-9]{2} ":" [0-9]{2} (":" [0-9]{2})? ("." [0-9]{1,6})? zone?
zone ::= "Z" | [+-] [0-9]{2} ":" [0-9]{2}
"#,
        closers: &[],
        members: &["2024-02-29", "2024-02-29T23:59", "1999-12-31T23:59:60.123456+05:30"],
        strangers: &[
            "2024-2-29",
            "20240-02-29",
            "2024-02-29T",
            "2024-02-29T10:00:00.1234567",
            "2024-02-29T10:00+0100",
            "2024-02-29 10:00",
        ],
    },
    Pair {
        name: "negated classes",
        lark: r#"
start: "key=" VALUE ("; key=" VALUE){0,2}
VALUE: /[^;= \n"]+/ | /"[^"\n]*"/
"#,
        gbnf: r#"
root  ::= "key=" value ("; key=" value){0,2}
value ::= [^;= \n"]+ | "\"" [^"\n]* "\""
"#,
        closers: &[";", "\""],
        members: &["key=a", "key=é€; key=\"a = b; c\"", "key=1; key=2; key=3"],
        strangers: &["key=", "key=a b", "key=a;key=b", "key=\"a", "key=a=b", "key=1; key=2; key=3; key=4"],
    },
    Pair {
        name: "nested groups",
        lark: r#"
start: /((a|bc?)+(-(x|yz)?)*){1,3}!/
"#,
        gbnf: r#"
root ::= ( ("a" | "b" "c"?)+ ("-" ("x" | "yz")?)* ){1,3} "!"
"#,
        closers: &["!"],
        members: &["a!", "bcb-x--yz!", "a-b-bc-yz!"],
        strangers: &["!", "c!", "a-xx!", "a-y!", "a", "a-a-a-a!", "a!!"],
    },
    Pair {
        name: "dashed multi-rule",
        lark: r#"
start: cmd ("\n" cmd){0,2} COMMENT?
cmd: move | say
move: "move " DIR " " NUM
DIR: "up" | "down" | "left" | "right"
NUM: /[1-9][0-9]?/
say: "say " WORD
WORD: /[a-z]+/
COMMENT: / #(?s:.){0,8}/
"#,
        gbnf: r#"
root     ::= cmd-list comment?
cmd-list ::= cmd ("\n" cmd){0,2}
cmd      ::= move-cmd | say-cmd
move-cmd ::= "move " dir-2d " " num-1
dir-2d   ::= "up" | "down" | "left" | "right"
num-1    ::= [1-9] [0-9]?
say-cmd  ::= "say " Word_
Word_    ::= [a-z]+
comment  ::= " #" .{0,8}
"#,
        closers: &[" #"],
        members: &["say hi", "move up 7\nsay x #\n\n", "move left 10\nmove right 99\nsay abc #12345678"],
        strangers: &[
            "move up 0",
            "move north 1",
            "say Hi",
            "say a\nsay b\nsay c\nsay d",
            "say hi #123456789",
            "move up 10\n",
        ],
    },
];

/// Greedy decoding under `constraint` over random logits until an
/// end-of-sequence token. Recursive grammars under uniform noise rarely
/// end, so on half the steps end-of-sequence and the `closers` (strings of
/// one token each) get a head start: when allowed, one of them wins.
fn decode_random(
    tok: &Tokenizer,
    factory: &ConstraintFactory,
    constraint: &Constraint,
    closers: &[&str],
    seed: u64,
) -> String {
    let mut favoured: Vec<u32> = tok.eos_ids().to_vec();
    for c in closers {
        let ids = tok.encode(c, false).unwrap();
        assert_eq!(ids.len(), 1, "{c:?} is not one token: {ids:?}");
        favoured.push(ids[0]);
    }
    let config = SamplingConfig { constraint: Some(constraint.clone()), ..SamplingConfig::greedy(400) };
    let mut sampler = Sampler::new(config, 0).unwrap();
    sampler.constrain(factory.compile(constraint).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..400 {
        let mut logits: Vec<f32> = (0..factory.vocab_size()).map(|_| rng.random::<f32>()).collect();
        if rng.random_bool(0.5) {
            for &t in &favoured {
                logits[t as usize] += 1.0;
            }
        }
        let token = sampler.sample(&logits, &out).unwrap().token;
        if tok.eos_ids().contains(&token) {
            return tok.decode(&out, false).unwrap();
        }
        out.push(token);
    }
    panic!("no end-of-sequence within 400 tokens: {:?}", tok.decode(&out, false));
}

/// Whether `text` is a whole string of the constraint: each of its tokens
/// is allowed in turn, and then end-of-sequence is.
fn accepts(tok: &Tokenizer, factory: &ConstraintFactory, constraint: &Constraint, text: &str) -> bool {
    let tokens = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&tokens, false).unwrap(), text, "the tokenizer does not round-trip {text:?}");
    let mut m = factory.compile(constraint).unwrap();
    for t in tokens {
        let mut logits = vec![0.0f32; factory.vocab_size()];
        if m.mask(&mut logits).is_err() || !logits[t as usize].is_finite() {
            return false;
        }
        m.commit(t).unwrap();
    }
    m.accepts_eos().unwrap()
}

#[test]
fn lark_and_gbnf_accept_each_others_samples() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    for pair in PAIRS {
        let lark = Constraint::Grammar(pair.lark.into());
        let gbnf = Constraint::Gbnf(pair.gbnf.into());
        let mut seen = Vec::new();
        for seed in 0..6 {
            let from_lark = decode_random(&tok, &factory, &lark, pair.closers, seed);
            let from_gbnf = decode_random(&tok, &factory, &gbnf, pair.closers, seed);
            assert!(accepts(&tok, &factory, &gbnf, &from_lark), "{}: gbnf refuses {from_lark:?}", pair.name);
            assert!(accepts(&tok, &factory, &lark, &from_gbnf), "{}: lark refuses {from_gbnf:?}", pair.name);
            assert!(accepts(&tok, &factory, &lark, &from_lark), "{}: lark refuses {from_lark:?}", pair.name);
            // One language, so the same masks at every step: the same noise
            // picks the same text.
            assert_eq!(from_lark, from_gbnf, "{}: seed {seed}", pair.name);
            seen.push(from_lark);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() >= 3, "{}: samples hardly vary: {seen:?}", pair.name);
        for text in pair.members {
            assert!(accepts(&tok, &factory, &lark, text), "{}: lark refuses {text:?}", pair.name);
            assert!(accepts(&tok, &factory, &gbnf, text), "{}: gbnf refuses {text:?}", pair.name);
        }
        for text in pair.strangers {
            assert!(!accepts(&tok, &factory, &lark, text), "{}: lark accepts {text:?}", pair.name);
            assert!(!accepts(&tok, &factory, &gbnf, text), "{}: gbnf accepts {text:?}", pair.name);
        }
    }
}

#[test]
fn one_character_lexemes_keep_gbnf_languages_exact() {
    // A greedy lexer with "ab" as one lexeme would never split `abc` as
    // "a" "bc"; GBNF has no lexer, so both strings are in the language.
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let gbnf = Constraint::Gbnf(r#"root ::= ("a" | "ab") "bc""#.into());
    for text in ["abc", "abbc"] {
        assert!(accepts(&tok, &factory, &gbnf, text), "{text:?}");
    }
    for text in ["ab", "abcc", "bc"] {
        assert!(!accepts(&tok, &factory, &gbnf, text), "{text:?}");
    }
    // `.` takes a newline, and `x{0}` is nothing at all.
    let any = Constraint::Gbnf("root ::= \"<\" . \">\" \"x\"{0}".into());
    assert!(accepts(&tok, &factory, &any, "<\n>"));
    assert!(!accepts(&tok, &factory, &any, "<\n>x"));
}

#[test]
fn root_may_recur_and_items_need_no_spaces() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let g = Constraint::Gbnf("root ::= \"(\" root \")\" | x\nx ::= \"x\"(\"y\")?[z]".into());
    for text in ["xz", "xyz", "((xz))"] {
        assert!(accepts(&tok, &factory, &g, text), "{text:?}");
    }
    for text in ["(xz", "x", "()"] {
        assert!(!accepts(&tok, &factory, &g, text), "{text:?}");
    }
}

#[test]
fn special_tokens_by_id_and_by_name() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    let im_start = tok.encode("<|im_start|>", false).unwrap();
    assert_eq!(im_start.len(), 1);
    for src in [format!("root ::= <[{}]> \"hi\"", im_start[0]), "root ::= <|im_start|> \"hi\"".to_string()] {
        let mut m = factory.compile(&Constraint::Gbnf(src.clone())).unwrap();
        let mut logits = vec![0.0f32; VOCAB];
        m.mask(&mut logits).unwrap();
        let allowed: Vec<usize> = (0..VOCAB).filter(|&t| logits[t].is_finite()).collect();
        assert_eq!(allowed, vec![im_start[0] as usize], "{src}");
    }
    // An unknown special token is refused when compiled, naming it.
    match factory.compile(&Constraint::Gbnf("root ::= <|no_such_token|>".into())) {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "constraint");
            assert!(reason.contains("no_such_token"), "{reason}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn bad_gbnf_is_a_config_error_naming_the_problem() {
    let tok = smollm2();
    let factory = ConstraintFactory::new(&tok, VOCAB).unwrap();
    for (src, msg) in [
        ("root ::= greeting\ngreting ::= \"hi\"", "GBNF 1:10: undefined rule `greeting`"),
        ("start ::= \"a\"", "GBNF 1:1: no `root` rule"),
        ("root ::= \"abc\n", "GBNF 1:10: unterminated string"),
        (r#"root ::= "a\qb""#, r"GBNF 1:12: unknown escape `\q`"),
        (r#"root ::= [0-9]{3,1}"#, "GBNF 1:15: in `{3,1}` the maximum is below the minimum"),
        ("root ::= !<think>", "only tokens given by id can be negated"),
    ] {
        match factory.compile(&Constraint::Gbnf(src.into())) {
            Err(Error::InvalidConfig { field, reason }) => {
                assert_eq!(field, "constraint");
                assert!(reason.starts_with("invalid `gbnf` constraint: "), "{reason}");
                assert!(reason.contains(msg), "{src:?}: {reason:?} lacks {msg:?}");
            }
            other => panic!("{src:?}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn sampling_config_reads_gbnf_as_json() {
    let c = SamplingConfig::from_json(r#"{"constraint": {"gbnf": "root ::= \"a\"+"}}"#).unwrap();
    assert_eq!(c.constraint, Some(Constraint::Gbnf("root ::= \"a\"+".into())));
    let back: SamplingConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}
