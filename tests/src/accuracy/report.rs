//! The results as a markdown table, followed by each scenario's notes.

use std::fmt::Write as _;

use super::measure::{Outcome, Status, TARGET_RIGHT, TARGET_WRONG};

/// The markdown report of `outcomes`.
pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "Targets: right ≥ {:.0}%, wrong ≤ {:.1}% of the bytes that belong to a workload \
         process.\n\n",
        TARGET_RIGHT * 100.0,
        TARGET_WRONG * 100.0
    );
    out.push_str(
        "| scenario | truth (B) | right | wrong | unknown | unowned (B) | conservation | \
         targets |\n|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&row(o));
    }
    out.push('\n');
    for o in outcomes.iter().filter(|o| !o.notes.is_empty()) {
        let _ = writeln!(out, "- **{}**: {}", o.scenario, o.notes.join("; "));
    }
    out
}

fn row(o: &Outcome) -> String {
    let pct = |f: f64| format!("{:.3}%", f * 100.0);
    match &o.status {
        Status::Ran => format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.truth,
            pct(o.right_fraction()),
            pct(o.wrong_fraction()),
            pct(o.unknown_fraction()),
            o.unowned,
            match &o.conservation {
                Ok(()) => "exact".to_owned(),
                Err(e) => format!("BROKEN: {e}"),
            },
            if o.meets_targets() {
                "met"
            } else {
                "**MISSED**"
            }
        ),
        Status::Skipped(why) => format!(
            "| {} | – | – | – | – | – | – | skipped: {why} |\n",
            o.scenario
        ),
        Status::Failed(why) => format!(
            "| {} | – | – | – | – | – | – | could not run: {} |\n",
            o.scenario,
            why.replace('|', "/").replace('\n', " ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_and_failed_rows_say_why() {
        let table = markdown(&[
            Outcome::not_run("sctp", Status::Skipped("no sctp".into())),
            Outcome::not_run("x", Status::Failed("a|b".into())),
        ]);
        assert!(table.contains("skipped: no sctp"));
        assert!(table.contains("could not run: a/b"));
    }
}
