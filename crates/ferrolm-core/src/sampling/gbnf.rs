//! llama.cpp's GBNF grammars (`name ::= ...` rules starting at `root`, see
//! llama.cpp's grammars/README.md) translated into llguidance's Lark
//! dialect, which is what [`Constraint::Gbnf`](super::Constraint::Gbnf)
//! compiles. A small lexer and recursive-descent parser build an AST; a
//! printer writes it back out as Lark.
//!
//! Supported: rules (names of letters, digits, `-` and `_`), `root` as the
//! start, string literals and character classes (`[a-z]`, `[^"\\]`) with
//! the escapes `\n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH`, `.` (any
//! character, newlines included), `( )`, `|`, `*`, `+`, `?`, `{m}`, `{m,}`,
//! `{m,n}`, `#` comments, rules spread over several lines (a rule runs until
//! the next `name ::=`, which must start a line), and tokens `<[ID]>`,
//! `!<[ID]>` and `<text>` (llguidance reads `<text>` as the special token
//! of that name). Refused with [`Error::InvalidInput`] at line:column:
//! syntax errors, undefined or twice-defined rules, a missing `root`,
//! reversed ranges, empty classes, `{m,n}` with `n < m`, and `!<text>`
//! (llguidance can only negate tokens by id).
//!
//! Every GBNF rule becomes a Lark rule (a non-terminal), and every terminal
//! is a lexeme of exactly one character: a literal `"abc"` is written
//! `"a" "b" "c"`, a class `/[a-z]/`, `.` is `/(?s:.)/`. llguidance's lexer is
//! greedy (a lexeme ends only where no allowed lexeme can go on) while GBNF
//! has no lexer at all; with multi-character lexemes `("a" | "ab") "bc"`
//! would lose `abc`. One-character lexemes are never a prefix of one
//! another, so the language is exactly GBNF's, at some cost in speed next
//! to a hand-written Lark grammar with real terminals.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};

use crate::error::{Error, Result};

/// Translates a GBNF grammar into llguidance's Lark syntax (its `root`
/// becomes `start`). Errors are [`Error::InvalidInput`] naming the line and
/// column and what is wrong there.
pub fn gbnf_to_lark(src: &str) -> Result<String> {
    let tokens = Lexer::new(src).tokens()?;
    let rules = Parser { tokens, i: 0, depth: 0 }.grammar()?;
    print(&rules)
}

/// 1-based line and column (in characters) of a place in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    line: usize,
    col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

fn error(at: Pos, what: impl fmt::Display) -> Error {
    Error::InvalidInput(format!("GBNF {at}: {what}"))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Define,
    Bar,
    LParen,
    RParen,
    /// `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`: at least `min`, at most `max`.
    Repeat {
        min: u32,
        max: Option<u32>,
    },
    Literal(Vec<char>),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Any,
    /// A tokenizer token, already in Lark's spelling (`<[7]>`, `<[^7]>`, `<name>`).
    Token(String),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Name(name) => write!(f, "`{name}`"),
            Tok::Define => f.write_str("`::=`"),
            Tok::Bar => f.write_str("`|`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Repeat { .. } => f.write_str("a repetition"),
            Tok::Literal(_) => f.write_str("a string"),
            Tok::Class { .. } => f.write_str("a character class"),
            Tok::Any => f.write_str("`.`"),
            Tok::Token(t) => write!(f, "`{t}`"),
            Tok::End => f.write_str("the end of the grammar"),
        }
    }
}

/// Splits the source into tokens, dropping spaces, newlines and comments
/// (where rules end is the parser's business).
struct Lexer {
    chars: Vec<char>,
    i: usize,
    pos: Pos,
}

impl Lexer {
    fn new(src: &str) -> Lexer {
        Lexer { chars: src.chars().collect(), i: 0, pos: Pos { line: 1, col: 1 } }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.pos = Pos { line: self.pos.line + 1, col: 1 };
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek(0) == Some(c);
        if found {
            self.bump();
        }
        found
    }

    fn tokens(mut self) -> Result<Vec<(Tok, Pos)>> {
        let mut out = Vec::new();
        loop {
            while let Some(c) = self.peek(0) {
                if c == '#' {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                } else if c.is_whitespace() {
                    self.bump();
                } else {
                    break;
                }
            }
            let at = self.pos;
            let Some(c) = self.bump() else {
                out.push((Tok::End, at));
                return Ok(out);
            };
            let tok = match c {
                ':' if self.peek(0) == Some(':') && self.peek(1) == Some('=') => {
                    self.bump();
                    self.bump();
                    Tok::Define
                }
                '|' => Tok::Bar,
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '*' => Tok::Repeat { min: 0, max: None },
                '+' => Tok::Repeat { min: 1, max: None },
                '?' => Tok::Repeat { min: 0, max: Some(1) },
                '{' => self.braces(at)?,
                '.' => Tok::Any,
                '"' => self.literal(at)?,
                '[' => self.class(at)?,
                '<' => self.token(at, false)?,
                '!' => {
                    if !self.eat('<') {
                        return Err(error(at, "`!` negates a token and must be followed by `<`"));
                    }
                    self.token(at, true)?
                }
                c if is_name_char(c) => {
                    let mut name = c.to_string();
                    while let Some(c) = self.peek(0).filter(|&c| is_name_char(c)) {
                        self.bump();
                        name.push(c);
                    }
                    Tok::Name(name)
                }
                ':' => return Err(error(at, "expected `::=`")),
                c => return Err(error(at, format!("unexpected character {c:?}"))),
            };
            out.push((tok, at));
        }
    }

    /// `{m}`, `{m,}` or `{m,n}`, spaces allowed inside; the `{` is eaten.
    fn braces(&mut self, at: Pos) -> Result<Tok> {
        let min = self.number(at)?.ok_or_else(|| error(at, "expected a number after `{`"))?;
        let max = if self.eat(',') { self.number(at)? } else { Some(min) };
        self.skip_spaces();
        if !self.eat('}') {
            return Err(error(at, "expected `}` to close the repetition `{...}`"));
        }
        match max {
            Some(max) if max < min => {
                Err(error(at, format!("in `{{{min},{max}}}` the maximum is below the minimum")))
            }
            _ => Ok(Tok::Repeat { min, max }),
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn number(&mut self, at: Pos) -> Result<Option<u32>> {
        // Lark reads repetition counts as i32 (with i32::MAX meaning no
        // bound); a million is far past any grammar that still compiles.
        const MAX: u32 = 1_000_000;
        self.skip_spaces();
        let mut n: Option<u32> = None;
        while let Some(d) = self.peek(0).and_then(|c| c.to_digit(10)) {
            self.bump();
            let v = n.unwrap_or(0).saturating_mul(10).saturating_add(d);
            if v > MAX {
                return Err(error(at, format!("repetition count is too large (at most {MAX})")));
            }
            n = Some(v);
        }
        self.skip_spaces();
        Ok(n)
    }

    /// A `"..."` string; the opening quote is eaten.
    fn literal(&mut self, at: Pos) -> Result<Tok> {
        let mut chars = Vec::new();
        loop {
            match self.peek(0) {
                None => return Err(error(at, "unterminated string (no closing `\"`)")),
                Some('"') => {
                    self.bump();
                    return Ok(Tok::Literal(chars));
                }
                Some(_) => chars.push(self.char()?),
            }
        }
    }

    /// A `[...]` or `[^...]` class; the `[` is eaten.
    fn class(&mut self, at: Pos) -> Result<Tok> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        loop {
            match self.peek(0) {
                None => return Err(error(at, "unterminated character class (no closing `]`)")),
                Some(']') => {
                    self.bump();
                    break;
                }
                Some(_) => {
                    let here = self.pos;
                    let lo = self.char()?;
                    // As in llama.cpp, a `-` just before `]` is a plain `-`.
                    let hi = if self.peek(0) == Some('-') && self.peek(1).is_some_and(|c| c != ']') {
                        self.bump();
                        self.char()?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(error(
                            here,
                            format!("reversed range {lo:?}-{hi:?} in a character class"),
                        ));
                    }
                    ranges.push((lo, hi));
                }
            }
        }
        if ranges.is_empty() {
            return Err(error(at, "empty character class"));
        }
        Ok(Tok::Class { negated, ranges })
    }

    /// One character of a string or class, escapes decoded.
    fn char(&mut self) -> Result<char> {
        let at = self.pos;
        let c = self.bump().ok_or_else(|| error(at, "unexpected end of the grammar"))?;
        if c != '\\' {
            return Ok(c);
        }
        let Some(e) = self.bump() else {
            return Err(error(at, "unfinished escape `\\` at the end of the grammar"));
        };
        let digits = match e {
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            '\\' | '"' | '[' | ']' | '-' => return Ok(e),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return Err(error(at, format!("unknown escape `\\{e}`"))),
        };
        let mut value = 0u32;
        for _ in 0..digits {
            match self.peek(0).and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    self.bump();
                    value = value * 16 + d;
                }
                None => return Err(error(at, format!("`\\{e}` needs {digits} hex digits"))),
            }
        }
        char::from_u32(value)
            .ok_or_else(|| error(at, format!("`\\{e}{value:0digits$X}` is not a Unicode scalar value")))
    }

    /// `<[ID]>` or `<text>`, negated when `!` came first; the `<` is eaten.
    fn token(&mut self, at: Pos, negated: bool) -> Result<Tok> {
        let mut text = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(error(at, "unterminated token (no closing `>`)")),
                Some('>') => break,
                Some(c) => text.push(c),
            }
        }
        if let Some(id) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            if !id.chars().all(|c| c.is_ascii_digit()) || id.parse::<u32>().is_err() {
                return Err(error(at, format!("`<[{id}]>`: a token id must be a number")));
            }
            return Ok(Tok::Token(format!("<[{}{id}]>", if negated { "^" } else { "" })));
        }
        if negated {
            return Err(error(
                at,
                format!("`!<{text}>`: only tokens given by id can be negated here; write `!<[ID]>`"),
            ));
        }
        // Lark spells special tokens `<[^<>\s]+>`.
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '<') {
            return Err(error(at, format!("`<{text}>` is not a token name")));
        }
        Ok(Tok::Token(format!("<{text}>")))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Alt(Vec<Expr>),
    Seq(Vec<Expr>),
    Ref(String, Pos),
    Literal(Vec<char>),
    Class { negated: bool, ranges: Vec<(char, char)> },
    Any,
    Token(String),
    Repeat { expr: Box<Expr>, min: u32, max: Option<u32> },
}

struct Rule {
    name: String,
    at: Pos,
    body: Expr,
}

/// Recursive descent over the tokens:
/// `grammar = rule*`, `rule = name "::=" alts`, `alts = seq ("|" seq)*`,
/// `seq = (atom repeat*)*`, `atom = name | string | class | "." | token | "(" alts ")"`.
struct Parser {
    tokens: Vec<(Tok, Pos)>,
    i: usize,
    /// How many `(` are open here.
    depth: usize,
}

/// Bounds on nesting, so that parsing and printing (both recursive) cannot
/// run out of stack on hostile input: open parentheses, and repetition
/// operators on one item (`x+?` has two).
const MAX_DEPTH: usize = 100;
const MAX_STACKED: usize = 4;

impl Parser {
    fn peek(&self) -> &(Tok, Pos) {
        &self.tokens[self.i]
    }

    fn next(&mut self) -> (Tok, Pos) {
        let t = self.tokens[self.i].clone();
        if t.0 != Tok::End {
            self.i += 1;
        }
        t
    }

    /// Whether a new rule (`name ::=`) starts here, which ends the one before.
    fn at_rule_start(&self) -> bool {
        matches!(self.peek().0, Tok::Name(_)) && self.tokens[self.i + 1].0 == Tok::Define
    }

    fn grammar(mut self) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        while self.peek().0 != Tok::End {
            let (tok, at) = self.next();
            let Tok::Name(name) = tok else {
                return Err(error(at, format!("unexpected {tok}, expected a rule `name ::= ...`")));
            };
            let (define, define_at) = self.next();
            if define != Tok::Define {
                return Err(error(define_at, format!("expected `::=` after `{name}`, found {define}")));
            }
            // Rules run on over newlines; one ending where another starts
            // on the same line is more likely a typo than intended.
            if self.i > 2 && self.tokens[self.i - 3].1.line == at.line {
                return Err(error(at, format!("rule `{name}` must start on a new line")));
            }
            let body = self.alts()?;
            rules.push(Rule { name, at, body });
        }
        Ok(rules)
    }

    fn alts(&mut self) -> Result<Expr> {
        let mut alts = vec![self.seq()?];
        while self.peek().0 == Tok::Bar {
            self.next();
            alts.push(self.seq()?);
        }
        let (tok, at) = self.peek();
        if !matches!(tok, Tok::RParen | Tok::End) && !self.at_rule_start() {
            return Err(error(*at, format!("unexpected {tok}")));
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap() } else { Expr::Alt(alts) })
    }

    fn seq(&mut self) -> Result<Expr> {
        let mut items = Vec::new();
        loop {
            if self.at_rule_start() {
                break;
            }
            let (tok, at) = self.peek().clone();
            let atom = match tok {
                Tok::Name(name) => Expr::Ref(name, at),
                Tok::Literal(chars) => Expr::Literal(chars),
                Tok::Class { negated, ranges } => Expr::Class { negated, ranges },
                Tok::Any => Expr::Any,
                Tok::Token(t) => Expr::Token(t),
                Tok::LParen => {
                    if self.depth == MAX_DEPTH {
                        return Err(error(at, format!("parentheses nested more than {MAX_DEPTH} deep")));
                    }
                    self.depth += 1;
                    self.next();
                    let inner = self.alts()?;
                    if self.peek().0 != Tok::RParen {
                        return Err(error(at, "unclosed `(`"));
                    }
                    self.depth -= 1;
                    inner
                }
                Tok::Repeat { .. } => return Err(error(at, "a repetition with nothing before it to repeat")),
                Tok::Define | Tok::Bar | Tok::RParen | Tok::End => break,
            };
            self.next();
            let mut item = atom;
            let mut stacked = 0;
            while let (Tok::Repeat { min, max }, op_at) = *self.peek() {
                stacked += 1;
                if stacked > MAX_STACKED {
                    return Err(error(op_at, format!("more than {MAX_STACKED} repetitions in a row")));
                }
                self.next();
                item = Expr::Repeat { expr: Box::new(item), min, max };
            }
            items.push(item);
        }
        Ok(if items.len() == 1 { items.pop().unwrap() } else { Expr::Seq(items) })
    }
}

/// Writes the rules as Lark: `root` is `start`, the other names made valid
/// Lark rule names (lower case, `_` for `-`, a letter first) and unique.
fn print(rules: &[Rule]) -> Result<String> {
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut used: HashSet<String> = HashSet::from(["start".to_string()]);
    let mut defined_at: HashMap<&str, Pos> = HashMap::new();
    for rule in rules {
        if let Some(first) = defined_at.insert(&rule.name, rule.at) {
            return Err(error(rule.at, format!("rule `{}` is already defined at {first}", rule.name)));
        }
        if rule.name == "root" {
            names.insert("root", "start".into());
            continue;
        }
        let mut base: String =
            rule.name.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() }).collect();
        if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
            base.insert(0, 'r');
        }
        let mut name = base.clone();
        let mut n = 1;
        while used.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        used.insert(name.clone());
        names.insert(&rule.name, name);
    }
    if !names.contains_key("root") {
        return Err(error(
            Pos { line: 1, col: 1 },
            "no `root` rule (a GBNF grammar starts at `root ::= ...`)",
        ));
    }
    let mut out = String::new();
    for rule in rules {
        write!(out, "{}: ", names[rule.name.as_str()]).unwrap();
        expr(&rule.body, Ctx::Alternatives, &names, &mut out)?;
        out.push('\n');
    }
    Ok(out)
}

/// Where an expression is printed, which decides whether it needs parentheses.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    /// A rule's body or inside `( )`.
    Alternatives,
    /// One item of a sequence.
    Item,
    /// What a repetition repeats.
    Operand,
}

fn expr(e: &Expr, ctx: Ctx, names: &HashMap<&str, String>, out: &mut String) -> Result<()> {
    let parens = match e {
        Expr::Alt(_) => ctx != Ctx::Alternatives,
        Expr::Seq(items) => ctx == Ctx::Operand && items.len() > 1,
        Expr::Literal(chars) => ctx == Ctx::Operand && chars.len() > 1,
        // Lark takes one operator per atom: `x+?` is `(x+)?`.
        Expr::Repeat { max, .. } => ctx == Ctx::Operand && *max != Some(0),
        _ => false,
    };
    if parens {
        out.push('(');
    }
    match e {
        Expr::Alt(alts) => {
            for (k, alt) in alts.iter().enumerate() {
                if k > 0 {
                    out.push_str(" | ");
                }
                expr(alt, Ctx::Alternatives, names, out)?;
            }
        }
        // Lark has no empty sequence; `""` is llguidance's empty string.
        Expr::Seq(items) if items.is_empty() => out.push_str("\"\""),
        Expr::Seq(items) => {
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                expr(item, Ctx::Item, names, out)?;
            }
        }
        Expr::Ref(name, at) => match names.get(name.as_str()) {
            Some(lark) => out.push_str(lark),
            None => return Err(error(*at, format!("undefined rule `{name}`"))),
        },
        Expr::Literal(chars) if chars.is_empty() => out.push_str("\"\""),
        // One lexeme per character: see the module doc.
        Expr::Literal(chars) => {
            for (k, &c) in chars.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                literal_char(c, out);
            }
        }
        Expr::Class { negated, ranges } => {
            out.push_str(if *negated { "/[^" } else { "/[" });
            for &(lo, hi) in ranges {
                class_char(lo, out);
                if hi != lo {
                    out.push('-');
                    class_char(hi, out);
                }
            }
            out.push_str("]/");
        }
        // GBNF's `.` takes newlines too, which a regex `.` does not.
        Expr::Any => out.push_str("/(?s:.)/"),
        Expr::Token(t) => out.push_str(t),
        // Lark refuses `{0}`; zero repetitions are the empty string.
        Expr::Repeat { max: Some(0), .. } => out.push_str("\"\""),
        Expr::Repeat { expr: inner, min, max } => {
            expr(inner, Ctx::Operand, names, out)?;
            match (min, max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (m, None) => write!(out, "{{{m},}}").unwrap(),
                (m, Some(n)) if m == n => write!(out, "{{{m}}}").unwrap(),
                (m, Some(n)) => write!(out, "{{{m},{n}}}").unwrap(),
            }
        }
    }
    if parens {
        out.push(')');
    }
    Ok(())
}

/// A one-character Lark string (JSON's escapes; Lark takes no raw control
/// characters in strings).
fn literal_char(c: char, out: &mut String) {
    match c {
        '"' => out.push_str(r#""\"""#),
        '\\' => out.push_str(r#""\\""#),
        c if c.is_control() => write!(out, "\"\\u{:04x}\"", c as u32).unwrap(),
        c => write!(out, "\"{c}\"").unwrap(),
    }
}

/// A character inside a regex class (Rust's `regex` syntax, between Lark's
/// `/.../`): letters, digits and harmless punctuation as they are, regex
/// metacharacters backslashed, the rest (`/`, spaces, controls, non-ASCII)
/// as `\x{HEX}`.
fn class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() || "!\"%',:;<=>@_`".contains(c) {
        out.push(c);
    } else if r"\.+*?()|[]{}^$#&-~".contains(c) {
        out.push('\\');
        out.push(c);
    } else {
        write!(out, "\\x{{{:x}}}", c as u32).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lark(src: &str) -> String {
        gbnf_to_lark(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    fn err(src: &str) -> String {
        match gbnf_to_lark(src) {
            Err(Error::InvalidInput(msg)) => msg,
            other => panic!("{src:?}: expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn literals_become_one_lexeme_per_character() {
        assert_eq!(lark(r#"root ::= "ab" "c""#), "start: \"a\" \"b\" \"c\"\n");
        assert_eq!(lark(r#"root ::= "ab"*"#), "start: (\"a\" \"b\")*\n");
        assert_eq!(lark(r#"root ::= """#), "start: \"\"\n");
    }

    #[test]
    fn escapes_decode_and_print_as_lark() {
        assert_eq!(
            lark(r#"root ::= "\n\t\"\\\x41\u00e9\U0001F600\[\]""#),
            "start: \"\\u000a\" \"\\u0009\" \"\\\"\" \"\\\\\" \"A\" \"é\" \"😀\" \"[\" \"]\"\n"
        );
        assert_eq!(lark(r#"root ::= "\x7f""#), "start: \"\\u007f\"\n");
    }

    #[test]
    fn classes_and_any() {
        assert_eq!(lark(r"root ::= [a-z0-9_]"), "start: /[a-z0-9_]/\n");
        assert_eq!(lark(r#"root ::= [^"\\]"#), "start: /[^\"\\\\]/\n");
        assert_eq!(lark(r"root ::= [ \t\n/\-\]]"), "start: /[\\x{20}\\x{9}\\x{a}\\x{2f}\\-\\]]/\n");
        assert_eq!(lark(r"root ::= [a-]"), "start: /[a\\-]/\n");
        assert_eq!(lark(r"root ::= [ぁ-ゟ]"), "start: /[\\x{3041}-\\x{309f}]/\n");
        assert_eq!(lark(r"root ::= ."), "start: /(?s:.)/\n");
    }

    #[test]
    fn groups_alternatives_and_repetitions() {
        assert_eq!(lark(r#"root ::= ("a" | "b" "c")+ "d"?"#), "start: (\"a\" | \"b\" \"c\")+ \"d\"?\n");
        assert_eq!(
            lark(
                r#"root ::= x{2} x{2,} x{2,5} x{0,1} x{0,} x{1,} x{0}  x{ 1 , 3 }
x ::= "x""#
            ),
            "start: x{2} x{2,} x{2,5} x? x* x+ \"\" x{1,3}\nx: \"x\"\n"
        );
        assert_eq!(lark(r#"root ::= "a"+? | "#), "start: (\"a\"+)? | \"\"\n");
        assert_eq!(lark(r#"root ::= ("a")"#), "start: \"a\"\n");
    }

    #[test]
    fn rules_span_lines_and_names_are_mapped() {
        let src = "# comment\nroot ::= item-1\n  (\",\" Item_1)*  # trailing\n\nitem-1 ::= \"x\" |\n \"y\"\nItem_1 ::= start\nstart ::= \"z\"\n";
        assert_eq!(
            lark(src),
            "start: item_1 (\",\" item_1_2)*\nitem_1: \"x\" | \"y\"\nitem_1_2: start_2\nstart_2: \"z\"\n"
        );
        assert_eq!(lark("root ::= 9lives\n9lives ::= \"9\""), "start: r9lives\nr9lives: \"9\"\n");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let ok = format!("root ::= {}\"a\"{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(lark(&ok).starts_with("start: \"a\""));
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(err(&deep).contains("parentheses nested more than 100 deep"));
    }

    #[test]
    fn tokens() {
        assert_eq!(lark("root ::= <[12]> !<[13]> <|im_end|>"), "start: <[12]> <[^13]> <|im_end|>\n");
        assert!(err("root ::= !<think>").contains("only tokens given by id can be negated"));
        assert!(err("root ::= <[x]>").contains("must be a number"));
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        for (src, msg) in [
            ("root ::= foo", "GBNF 1:10: undefined rule `foo`"),
            ("item ::= \"x\"", "GBNF 1:1: no `root` rule"),
            ("", "no `root` rule"),
            ("root ::= \"abc", "GBNF 1:10: unterminated string"),
            ("root ::= \"\\q\"", "GBNF 1:11: unknown escape `\\q`"),
            ("root ::= \"\\x4\"", "`\\x` needs 2 hex digits"),
            ("root ::= \"\\uD800\"", "is not a Unicode scalar value"),
            ("root ::= \"a\"{3,1}", "GBNF 1:13: in `{3,1}` the maximum is below the minimum"),
            ("root ::= \"a\"{,1}", "expected a number after `{`"),
            ("root ::= [z-a]", "reversed range"),
            ("root ::= []", "empty character class"),
            ("root ::= [abc", "unterminated character class"),
            ("root ::= (\"a\"", "GBNF 1:10: unclosed `(`"),
            ("root ::= \"a\")", "GBNF 1:13: unexpected `)`"),
            ("root ::= * \"a\"", "nothing before it to repeat"),
            ("root ::= \"a\" | *", "nothing before it to repeat"),
            ("root \"a\"", "expected `::=` after `root`"),
            ("root := \"a\"", "expected `::=`"),
            ("root ::= \"a\"\nroot ::= \"b\"", "GBNF 2:1: rule `root` is already defined at 1:1"),
            ("root ::= a b ::= \"b\"\na ::= \"a\"", "rule `b` must start on a new line"),
            ("root ::= \"a\" ; ", "unexpected character ';'"),
            ("::= \"a\"", "unexpected `::=`"),
            ("root ::= \"a\"+*?*+", "GBNF 1:17: more than 4 repetitions in a row"),
        ] {
            let got = err(src);
            assert!(got.contains(msg), "{src:?}: {got:?} lacks {msg:?}");
        }
    }
}
