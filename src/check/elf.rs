//! The Slurm release a built plugin is for, read from its ELF file: the
//! bytes of the exported `plugin_version` symbol (src/ffi/exports.rs). The
//! library is never loaded: a foreign or broken `.so` runs no code here.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// Shared libraries larger than this are not a SPANK plugin.
const MAX_PLUGIN: u64 = 1 << 30;

/// `plugin_version` of the ELF shared library at `path`.
pub fn plugin_version(path: &Path) -> Result<u32, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_PLUGIN {
        return Err(format!(
            "{} is {len} bytes: not a SPANK plugin",
            path.display()
        ));
    }
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    version_in(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// `plugin_version` in an ELF image.
pub fn version_in(data: &[u8]) -> Result<u32, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF library: {e}"))?;
    let sym = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("plugin_version"))
        .ok_or("no plugin_version symbol: not a SPANK plugin")?;
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or("plugin_version is not defined in the library")?;
    let bytes = section
        .data_range(sym.address(), 4)
        .map_err(|e| format!("plugin_version unreadable: {e}"))?
        .ok_or("plugin_version lies outside its section")?;
    let b: [u8; 4] = bytes
        .try_into()
        .map_err(|_| "plugin_version is not 4 bytes")?;
    Ok(if file.is_little_endian() {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    })
}

/// Where `plugin_version`'s bytes lie in the file (for tests that make a
/// plugin built for another release out of a copy of this one).
pub fn version_offset(data: &[u8]) -> Option<usize> {
    let file = object::File::parse(data).ok()?;
    let sym = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("plugin_version"))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    let (start, _) = section.file_range()?;
    usize::try_from(start + (sym.address() - section.address())).ok()
}
