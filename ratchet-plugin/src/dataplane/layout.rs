//! Which build's programs and which layout of maps a pin root holds, and a
//! new build's put in place under live links without a frame lost.
//!
//! Two markers sit beside the pins, as empty directories (bpffs holds no
//! files, and bpftool lists them): `layout-<N>`, the version of the maps'
//! keys, values and pin names, and `build-<hash>`, which embedded object
//! the programs came from. A pin root without them is layout 1, from before
//! they were written.
//!
//! A new build loads its programs beside the pins ([`Staged`]): over the
//! same maps when the layout is the same, with fresh maps when it is not
//! (the caller fills them before anything runs them). The caller swaps the
//! programs on every live end ([`crate::tc::swap`]: a clsact filter replaced
//! in place, a tcx link updated, both atomic), then [`Staged::commit`] puts
//! the new pins where the old ones were.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use aya::{EbpfLoader, programs::SchedClassifier};

use super::{DataplaneError, MAP_PINS, OBJECT, PIN_LINKS, PIN_PROG, Program, obj_get, pin_into, staging_dir};

/// The layout of the maps this build reads and writes. A test-only build
/// (`layout-next`) speaks the next one, to exercise an upgrade across layouts.
/// Layout 2 added the `lost` map and [`ratchet_common::Peer::loss`].
pub const LAYOUT: u32 = if cfg!(feature = "layout-next") { 3 } else { 2 };

/// What a pin root holds, against this build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing is loaded.
    Nothing,
    /// This build's programs and layout.
    Current,
    /// Another build's programs over maps of this layout: the programs are
    /// swapped, the maps kept.
    OtherBuild,
    /// An older layout: new maps are built beside the old and swapped in.
    Older(u32),
    /// A newer layout: a downgrade, refused.
    Newer(u32),
}

/// What `root` holds, by its markers.
pub fn pinned(root: &Path) -> Result<Pinned, DataplaneError> {
    if !root.join(PIN_PROG).exists() {
        return Ok(Pinned::Nothing);
    }
    let (layout, build) = markers(root)?;
    Ok(match layout.cmp(&LAYOUT) {
        std::cmp::Ordering::Less => Pinned::Older(layout),
        std::cmp::Ordering::Greater => Pinned::Newer(layout),
        std::cmp::Ordering::Equal if build.as_deref() == Some(build_id().as_str()) => Pinned::Current,
        std::cmp::Ordering::Equal => Pinned::OtherBuild,
    })
}

/// The pinned layout (1 when unmarked) and build, if marked.
pub(super) fn markers(root: &Path) -> Result<(u32, Option<String>), DataplaneError> {
    let entries =
        fs::read_dir(root).map_err(|source| DataplaneError::PinRoot { path: root.display().to_string(), source })?;
    let (mut layout, mut build) = (1, None);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("layout-").and_then(|v| v.parse().ok()) {
            layout = version;
        } else if let Some(id) = name.strip_prefix("build-") {
            build = Some(id.to_owned());
        }
    }
    Ok((layout, build))
}

/// This build's embedded object, as a short hash.
pub fn build_id() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    OBJECT.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Writes this build's markers into a pin directory.
pub(super) fn mark(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700);
    builder.create(dir.join(format!("layout-{LAYOUT}")))?;
    builder.create(dir.join(format!("build-{}", build_id())))
}

/// This build's programs, loaded and pinned beside a pin root, not yet
/// running anywhere. Removed again when dropped uncommitted.
pub struct Staged {
    root: PathBuf,
    dir: PathBuf,
    /// Over the root's maps (same layout), or with maps of its own.
    shares_maps: bool,
    committed: bool,
}

impl Staged {
    /// Loads this build beside `root`: over its maps when `share_maps`,
    /// else with fresh, empty maps of this layout.
    pub fn new(root: &Path, share_maps: bool) -> Result<Self, DataplaneError> {
        let dir = staging_dir(root);
        let failed = |source| DataplaneError::PinRoot { path: dir.display().to_string(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(failed)?;
        let staged = Self { root: root.to_owned(), dir: dir.clone(), shares_maps: share_maps, committed: false };
        if share_maps {
            let mut loader = EbpfLoader::new();
            for (map, pin) in MAP_PINS {
                loader.map_pin_path(map, root.join(pin));
            }
            pin_programs(&mut loader.load(OBJECT)?, &dir)?;
            mark(&dir).map_err(failed)?;
        } else {
            pin_into(&dir)?;
        }
        Ok(staged)
    }

    /// Where the staged pins are (a dataplane opened there, for fresh maps).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new fd of a staged program, to swap in.
    pub fn program_fd(&self, program: Program) -> Result<OwnedFd, DataplaneError> {
        let pin = self.dir.join(program.pin());
        obj_get(&pin, 0).map_err(|source| DataplaneError::PinRoot { path: pin.display().to_string(), source })
    }

    /// Points the tcx link of a host veth (pinned under the root) at a
    /// staged program, in one `BPF_LINK_UPDATE`: no moment without one.
    pub fn update_tcx_link(&self, ifname: &str, program: Program) -> Result<(), DataplaneError> {
        let pin = self.root.join(PIN_LINKS).join(ifname);
        let failed = |source| DataplaneError::PinRoot { path: pin.display().to_string(), source };
        let link = obj_get(&pin, 0).map_err(failed)?;
        let program = self.program_fd(program)?;
        link_update(link.as_fd(), program.as_fd()).map_err(failed)
    }

    /// Puts the staged pins where the root's were, once every live end runs
    /// the staged programs: the programs (and markers) alone over shared
    /// maps, else the whole directory, the tcx link pins moved into it first.
    pub fn commit(mut self) -> Result<(), DataplaneError> {
        let failed = |path: &Path, source| DataplaneError::PinRoot { path: path.display().to_string(), source };
        if self.shares_maps {
            for program in [Program::ToPeer, Program::FromTunnel] {
                let (from, to) = (self.dir.join(program.pin()), self.root.join(program.pin()));
                fs::rename(&from, &to).map_err(|e| failed(&to, e))?;
            }
            replace_markers(&self.root, &self.dir).map_err(|e| failed(&self.root, e))?;
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            let links = self.root.join(PIN_LINKS);
            if links.exists() {
                fs::rename(&links, self.dir.join(PIN_LINKS)).map_err(|e| failed(&links, e))?;
            }
            let retired = PathBuf::from(format!("{}-retired-{}", self.root.display(), std::process::id()));
            fs::rename(&self.root, &retired).map_err(|e| failed(&self.root, e))?;
            fs::rename(&self.dir, &self.root).map_err(|e| failed(&self.root, e))?;
            let _ = fs::remove_dir_all(&retired);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Loads and pins the programs of an object whose maps are already made.
pub(super) fn pin_programs(ebpf: &mut aya::Ebpf, dir: &Path) -> Result<(), DataplaneError> {
    for program in [Program::ToPeer, Program::FromTunnel] {
        let name = program.name();
        let classifier: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::NotInObject { name })?
            .try_into()
            .map_err(|source| DataplaneError::Program { what: name.into(), source })?;
        classifier.load().map_err(|source| DataplaneError::Program { what: format!("load {name}"), source })?;
        classifier.pin(dir.join(program.pin())).map_err(|e| DataplaneError::PinRoot {
            path: dir.join(program.pin()).display().to_string(),
            source: io::Error::other(e),
        })?;
    }
    Ok(())
}

/// The root's markers swapped for the staged ones.
fn replace_markers(root: &Path, staged: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("layout-") || name.starts_with("build-") {
            fs::remove_dir(entry.path())?;
        }
    }
    for entry in fs::read_dir(staged)?.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text.starts_with("layout-") || text.starts_with("build-") {
            fs::rename(entry.path(), root.join(&name))?;
        }
    }
    Ok(())
}

/// `BPF_LINK_UPDATE`: the link runs `program` from now on (aya 0.14 does
/// this only for links it made itself, not for one opened from its pin).
fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    /// The `link_update` member of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    // Open fds are never negative.
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid BPF_LINK_UPDATE attribute; both fds are open for the call.
    let done = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, &attr, size_of::<LinkUpdateAttr>()) };
    if done < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
