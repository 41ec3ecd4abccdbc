//! `tollgate-wit-c <wit-dir> <out-dir>`: writes the C bindings of the `plugin` world
//! (`plugin.h`, `plugin.c`, `plugin_component_type.o`) the way `wit-bindgen c` does, using the
//! same generator crate, so building a C plugin needs no separately installed wit-bindgen.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser::Resolve;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [wit_dir, out_dir] = args.as_slice() else {
        bail!("usage: tollgate-wit-c <wit-dir> <out-dir>");
    };
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("cannot read the WIT package in {}", wit_dir.display()))?;
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .context("the WIT package has no `plugin` world")?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    for (name, contents) in files.iter() {
        let path = out_dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
