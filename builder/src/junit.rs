//! JUnit XML reports of `appliance test --junit FILE`, the format CI systems (GitHub Actions,
//! GitLab CI, Jenkins) show test results from: one `testcase` per check.

use std::fmt::Write as _;

use crate::testing::TestReport;

/// The report as JUnit XML.
pub fn render(report: &TestReport) -> String {
    let failures = report.cases.iter().filter(|c| c.failure.is_some()).count();
    let total: f64 = report.cases.iter().map(|c| c.seconds).sum();
    let suite = format!("appliance test {}", report.image.display());
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"appliance test\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.1}\">",
        report.cases.len()
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.1}\">",
        escape(&suite),
        report.cases.len()
    );
    let _ = writeln!(
        xml,
        "    <properties><property name=\"accelerator\" value=\"{}\"/></properties>",
        escape(&report.accel)
    );
    for c in &report.cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.1}\"",
            escape(&c.group),
            escape(&c.name),
            c.seconds
        );
        match &c.failure {
            None => xml.push_str("/>\n"),
            Some(f) => {
                let first = f.lines().next().unwrap_or_default();
                let _ = writeln!(
                    xml,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(first),
                    escape(f)
                );
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

/// XML text and attribute escaping; control characters (console output) become spaces.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => " ".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCase;

    #[test]
    fn cases_and_failures_are_counted_and_escaped() {
        let report = TestReport {
            image: "out/a&b.raw".into(),
            accel: "TCG".into(),
            boots: vec![],
            tamper: None,
            failures: vec!["x".into()],
            passed: false,
            cases: vec![
                TestCase {
                    group: "uefi".into(),
                    name: "boot 1".into(),
                    seconds: 30.0,
                    failure: None,
                },
                TestCase {
                    group: "bios".into(),
                    name: "first and second boot".into(),
                    seconds: 12.5,
                    failure: Some("no readiness line <within 300 s>\n\x1b[0mlast lines".into()),
                },
            ],
        };
        let xml = render(&report);
        assert!(
            xml.contains("tests=\"2\" failures=\"1\" time=\"42.5\""),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"appliance test out/a&amp;b.raw\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"no readiness line &lt;within 300 s&gt;\">"),
            "{xml}"
        );
        assert!(!xml.contains('\x1b'), "control characters are removed");
        assert!(xml.contains("<testcase classname=\"uefi\" name=\"boot 1\" time=\"30.0\"/>"));
    }
}
