//! What the output device allows: how wide a line may be, and whether escape sequences
//! (clear screen) may be sent.
//!
//! Pure decision ([`Output::decide`]) from facts gathered in one place ([`Output::detect`]):
//! escapes only on a terminal whose `TERM` is set and not `dumb`; the width from `COLUMNS`,
//! else the terminal's, else none (a pipe or file gets whole lines).

use std::io::IsTerminal;

/// How frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// Lines are cut to this many characters.
    pub width: Option<usize>,
    /// Each frame clears the screen and redraws from the top.
    pub escapes: bool,
}

impl Output {
    /// Reads the environment and stdout.
    pub fn detect() -> Output {
        let stdout = std::io::stdout();
        let tty = stdout.is_terminal();
        let tty_width = terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0));
        Output::decide(
            tty,
            std::env::var("TERM").ok().as_deref(),
            std::env::var("COLUMNS").ok().as_deref(),
            tty_width,
        )
    }

    /// The rules of the module doc, from the facts.
    pub fn decide(
        tty: bool,
        term: Option<&str>,
        columns: Option<&str>,
        tty_width: Option<usize>,
    ) -> Output {
        let from_env = columns
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&w| w > 0);
        let width = from_env.or(if tty {
            tty_width.filter(|&w| w > 0)
        } else {
            None
        });
        let escapes = tty && term.is_some_and(|t| !t.is_empty() && t != "dumb");
        Output { width, escapes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_on_a_capable_terminal() {
        assert!(Output::decide(true, Some("xterm-256color"), None, Some(80)).escapes);
        assert!(!Output::decide(true, Some("dumb"), None, Some(80)).escapes);
        assert!(!Output::decide(true, None, None, Some(80)).escapes);
        assert!(!Output::decide(true, Some(""), None, Some(80)).escapes);
        assert!(!Output::decide(false, Some("xterm"), None, None).escapes);
    }

    #[test]
    fn width_from_columns_then_the_terminal_then_none() {
        let width = |tty, columns, size| Output::decide(tty, Some("xterm"), columns, size).width;
        assert_eq!(width(true, Some("40"), Some(120)), Some(40));
        assert_eq!(width(false, Some("40"), None), Some(40));
        assert_eq!(width(true, None, Some(120)), Some(120));
        assert_eq!(width(true, Some("junk"), Some(120)), Some(120));
        assert_eq!(width(true, Some("0"), Some(0)), None);
        assert_eq!(width(false, None, Some(120)), None);
    }
}
