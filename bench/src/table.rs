//! The table the command prints.

pub struct Row {
    pub figure: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: &'static str,
}

impl Row {
    pub fn new(figure: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            ours: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: "",
        }
    }
}

pub fn render(rows: &[Row]) -> String {
    let head = ["figure", "ours", "baseline", "ratio", "target", "met"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.as_str(),
                &r.ours,
                &r.baseline,
                &r.ratio,
                &r.target,
                r.verdict,
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: [&str; 6]| {
        out.push('|');
        for (i, s) in c.iter().enumerate() {
            out.push_str(&format!(" {s:<width$} |", width = w[i]));
        }
        out.push('\n');
    };
    line(&mut out, head);
    line(
        &mut out,
        w.map(|n| "-".repeat(n)).each_ref().map(String::as_str),
    );
    for c in cells {
        line(&mut out, c);
    }
    out
}
