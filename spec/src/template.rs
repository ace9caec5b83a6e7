//! The one template dialect of the project (minijinja), for the files the build renders
//! (`*.j2` in overlays) and the ones the machine renders at setup (`*.jinja`).
//!
//! Undefined variables are errors, so a typo fails instead of rendering as nothing. A block tag
//! takes its own line with it (`trim_blocks`, `lstrip_blocks`), so templates can be indented for
//! reading, and the trailing newline of a file is kept.

use anyhow::Result;
use minijinja::{syntax::SyntaxConfig, Environment, UndefinedBehavior};

/// An environment with the project's syntax and strict undefined behaviour.
pub fn environment<'s>() -> Result<Environment<'s>> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| anyhow::anyhow!("template syntax settings: {e}"))?;
    env.set_syntax(syntax);
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_take_their_line_and_undefined_fails() {
        let mut env = environment().unwrap();
        env.add_template("t", "a\n  {% if x %}\nb\n  {% endif %}\nc\n")
            .unwrap();
        let out = env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! { x => true })
            .unwrap();
        assert_eq!(out, "a\nb\nc\n");
        env.add_template("u", "{{ y }}").unwrap();
        assert!(env.get_template("u").unwrap().render(()).is_err());
    }
}
