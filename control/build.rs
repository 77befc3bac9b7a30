//! The version `homeward --version` prints: the package's, with the build's
//! tag if it was built with one (`HOMEWARD_BUILD_TAG=b2 cargo build`), so two
//! builds can be told apart (the takeover test runs one against the other).

fn main() {
    println!("cargo:rerun-if-env-changed=HOMEWARD_BUILD_TAG");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match std::env::var("HOMEWARD_BUILD_TAG") {
        Ok(tag) if !tag.is_empty() => format!("{version}+{tag}"),
        _ => version,
    };
    println!("cargo:rustc-env=HOMEWARD_VERSION={version}");
}
