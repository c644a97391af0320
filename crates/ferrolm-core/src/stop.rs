//! Stop strings over streamed text: text is released only once it cannot be
//! the start of a stop string, and generation ends before the first match.

pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released.
    held: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> StopStrings {
        StopStrings { stops, held: String::new() }
    }

    /// Takes the next piece of text; returns the text that can be released
    /// and whether a stop string was found (the text before it is released,
    /// the stop string and anything after are dropped). With `last`, nothing
    /// is held back.
    pub fn feed(&mut self, piece: &str, last: bool) -> (String, bool) {
        self.held.push_str(piece);
        let first_match = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_match {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = if last { 0 } else { self.partial_match_len() };
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Length of the longest suffix of `held` that begins some stop string.
    fn partial_match_len(&self) -> usize {
        (1..=self.held.len())
            .rev()
            .filter(|&n| self.held.is_char_boundary(self.held.len() - n))
            .find(|&n| {
                let tail = &self.held[self.held.len() - n..];
                self.stops.iter().any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for (i, p) in pieces.iter().enumerate() {
            let (text, stopped) = s.feed(p, i + 1 == pieces.len());
            out += &text;
            if stopped {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn stops_before_a_match_split_across_pieces() {
        assert_eq!(run(&["\nUser:"], &["Hello", " there\nUs", "er: hi"]), ("Hello there".into(), true));
        assert_eq!(run(&["END"], &["abcEN", "Dxyz"]), ("abc".into(), true));
    }

    #[test]
    fn releases_held_text_that_did_not_match() {
        assert_eq!(run(&["END"], &["abcEN", "x", "yz"]), ("abcENxyz".into(), false));
        assert_eq!(run(&["END"], &["héllo E"]), ("héllo E".into(), false));
        assert_eq!(run(&[], &["plain", " text"]), ("plain text".into(), false));
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["b", "a"], &["xxabyy"]), ("xx".into(), true));
    }
}
