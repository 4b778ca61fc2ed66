//! Paths read from data files (a CSV's image column, an index's shard names) are joined onto
//! the folder they belong to only when they stay inside it: a label file from elsewhere must
//! not make the program read `../../../etc/passwd` or any absolute path it names.

use std::path::{Component, Path, PathBuf};

/// Why a path read from a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEscape {
    /// The path is absolute (or has a drive prefix).
    Absolute,
    /// Its `..` components climb above the root.
    LeavesRoot,
    /// It should be one file name but has a folder part (or is `.` / `..`).
    NotAFileName,
}

impl std::fmt::Display for PathEscape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Absolute => "is absolute",
            Self::LeavesRoot => "climbs out of its root with `..`",
            Self::NotAFileName => "is not a plain file name",
        })
    }
}

/// `root` joined with `relative`, or why `relative` would leave `root`. With `allow_outside`
/// (the user's explicit `--allow-absolute-paths`) any path is joined as given.
///
/// The check is lexical: a symbolic link inside `root` is followed wherever it points, as
/// the user who made it intended.
pub fn join_inside(
    root: &Path,
    relative: &str,
    allow_outside: bool,
) -> Result<PathBuf, PathEscape> {
    let path = Path::new(relative);
    if allow_outside {
        return Ok(root.join(path));
    }
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return Err(PathEscape::Absolute),
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or(PathEscape::LeavesRoot)?;
            }
            Component::Normal(_) => depth += 1,
        }
    }
    Ok(root.join(path))
}

/// Whether `name` is one plain file name (no folder part, not `.` or `..`).
pub fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_root_join_and_escapes_are_refused() {
        let root = Path::new("/data/site");
        assert_eq!(
            join_inside(root, "a/b/../c.png", false),
            Ok(PathBuf::from("/data/site/a/b/../c.png"))
        );
        assert_eq!(
            join_inside(root, "./c.png", false),
            Ok(PathBuf::from("/data/site/./c.png"))
        );
        assert_eq!(
            join_inside(root, "../../../etc/passwd", false),
            Err(PathEscape::LeavesRoot)
        );
        assert_eq!(
            join_inside(root, "a/../../b", false),
            Err(PathEscape::LeavesRoot)
        );
        assert_eq!(
            join_inside(root, "/etc/passwd", false),
            Err(PathEscape::Absolute)
        );
        assert_eq!(
            join_inside(root, "/etc/passwd", true),
            Ok(PathBuf::from("/etc/passwd"))
        );
        assert_eq!(
            join_inside(root, "../x.png", true),
            Ok(PathBuf::from("/data/site/../x.png"))
        );
    }

    #[test]
    fn plain_file_names() {
        assert!(is_plain_file_name("00000001_000.png"));
        assert!(!is_plain_file_name("../00000001_000.png"));
        assert!(!is_plain_file_name("a/b.png"));
        assert!(!is_plain_file_name(".."));
        assert!(!is_plain_file_name(""));
        assert!(!is_plain_file_name("/etc/passwd"));
    }
}
