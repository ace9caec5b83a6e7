//! Per-test wall times for the project's CI: `let _t = appliance_qemu_tests::timed!();` at the
//! top of a slow test appends one line, `name<TAB>seconds<TAB>passed|failed`, to the file named
//! by `APPLIANCE_TEST_TIMES` when the test ends (nothing is written when it is unset). `.ci/run`
//! sets it and prints the table at the end of the run.

use std::io::Write;
use std::time::Instant;

/// The environment variable naming the file the times are appended to.
pub const TIMES_FILE_VAR: &str = "APPLIANCE_TEST_TIMES";

/// Records its test's time when dropped (at the end of the test, passed or panicked).
pub struct TestTimer {
    name: String,
    start: Instant,
}

impl TestTimer {
    pub fn start(name: &str) -> TestTimer {
        TestTimer {
            name: name.to_string(),
            start: Instant::now(),
        }
    }
}

impl Drop for TestTimer {
    fn drop(&mut self) {
        let Some(file) = std::env::var_os(TIMES_FILE_VAR) else {
            return;
        };
        let outcome = if std::thread::panicking() {
            "failed"
        } else {
            "passed"
        };
        let line = format!(
            "{}\t{:.1}\t{outcome}\n",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
        // One write of one short line in append mode: lines of parallel tests do not mix.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("could not record the test time in {file:?}: {e}");
        }
    }
}

/// A [`TestTimer`] named after the enclosing function (`crate::module::test_name`).
#[macro_export]
macro_rules! timed {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        $crate::test_times::TestTimer::start(name.strip_suffix("::here").unwrap_or(name))
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_test_appends_its_name_time_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("times.tsv");
        // The variable is read at drop; set it for this process only around the two timers.
        std::env::set_var(TIMES_FILE_VAR, &file);
        drop(crate::timed!());
        let failed = std::thread::spawn(|| {
            let _t = TestTimer::start("panicking");
            panic!("on purpose");
        })
        .join();
        std::env::remove_var(TIMES_FILE_VAR);
        assert!(failed.is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(
            lines[0][0],
            "appliance_qemu_tests::test_times::tests::a_finished_test_appends_its_name_time_and_outcome"
        );
        assert!(lines[0][1].parse::<f64>().is_ok());
        assert_eq!(lines[0][2], "passed");
        assert_eq!(lines[1], ["panicking", lines[1][1], "failed"]);
    }
}
