import Glibc

/// What identifies one version of a file: device and inode (which file), size, modification and status
/// change times (which contents). Any write to a file changes its ctime, which no user can set back; a
/// replacement (rename over the path) changes the inode.
public struct FileSignature: Sendable, Equatable {
    public let device: UInt64
    public let inode: UInt64
    public let size: Int64
    public let modified: timespec
    public let changed: timespec

    public init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = info.st_mtim
        changed = info.st_ctim
    }

    /// The signature of whatever is at `path` now, or nil when it cannot be stat'ed.
    public static func current(of path: String) -> FileSignature? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileSignature(info)
    }

    /// Whether the file's last change is within `seconds` of now. File timestamps come from a coarse
    /// clock (a few milliseconds), so a second write within the same tick can leave every field equal:
    /// a file changed this recently is not trusted to stay as it was checked.
    public func changedRecently(within seconds: Int = 2) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return now.tv_sec - changed.tv_sec < seconds
    }

    public static func == (a: FileSignature, b: FileSignature) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size
            && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
            && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
    }

    /// A file type in words, for messages.
    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFLNK: return "a symbolic link"
        default: return "an unknown file type"
        }
    }
}
