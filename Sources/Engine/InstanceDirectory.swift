// The instance directory, made safe before anything is put in it or deleted from it: /dev/shm
// is writable by everyone, so anyone could have planted a directory or a symbolic link on the
// path first. Every component is opened without following links, from the one checked before
// it; each must be a directory owned by this user or root, and not writable by others unless it
// is a root-owned sticky directory (/dev/shm, /tmp): then what is below it must be ours.
import Glibc
import SharedMemory

enum InstanceDirectory {
    /// Opens (creating what is missing) and checks `path`; returns a descriptor of the instance
    /// directory. With a group, the instance directory is 2770 of that group (its members attach
    /// there) and the parents this user created are 0711 (they can reach it, not list it).
    static func prepare(_ path: String, group: gid_t?) throws -> Int32 {
        guard path.hasPrefix("/") else { throw EngineError("the instance directory \(path) must be an absolute path") }
        let names = path.split(separator: "/").map(String.init)
        guard !names.isEmpty, !names.contains(".."), !names.contains(".") else {
            throw EngineError("the instance directory \(path) must be a plain absolute path")
        }
        var fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw EngineError.system(SystemCallError("open", "/", errno: errno)) }
        var walked = ""
        var belowShared = false
        let me = geteuid()
        for (i, name) in names.enumerated() {
            let isLast = i == names.count - 1
            walked += "/" + name
            var next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            var created = false
            if next < 0 && errno == ENOENT {
                let mode: mode_t = isLast ? (group == nil ? 0o700 : 0o770) : (group == nil ? 0o700 : 0o711)
                if mkdirat(fd, name, mode) != 0 && errno != EEXIST {
                    let e = errno
                    close(fd)
                    throw EngineError.system(SystemCallError("mkdir", walked, errno: e))
                }
                created = true
                next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let openError = errno
            close(fd)
            guard next >= 0 else {
                if openError == ELOOP || openError == ENOTDIR {
                    var info = stat()
                    let isLink = lstat(walked, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK
                    throw EngineError("\(walked) is \(isLink ? "a symbolic link" : "not a directory"): refusing to use it for the instance directory \(path)")
                }
                throw EngineError.system(SystemCallError("open", walked, errno: openError))
            }
            fd = next
            var info = stat()
            guard fstat(fd, &info) == 0 else {
                let e = errno
                close(fd)
                throw EngineError.system(SystemCallError("fstat", walked, errno: e))
            }
            let sticky = info.st_mode & S_ISVTX != 0
            let othersWrite = info.st_mode & (S_IWGRP | S_IWOTH) != 0
            // Below a directory anyone can write to, only what this user made can be trusted.
            if belowShared || isLast {
                guard info.st_uid == me else {
                    close(fd)
                    throw EngineError("\(walked) belongs to uid \(info.st_uid), not to this user (uid \(me)): someone else made it; refusing to use it")
                }
            } else if info.st_uid != me && info.st_uid != 0 {
                close(fd)
                throw EngineError("\(walked) belongs to uid \(info.st_uid), neither this user nor root: refusing to use it")
            }
            if isLast {
                if let group {
                    if info.st_gid != group { fchown(fd, uid_t.max, group) }
                    fchmod(fd, 0o2770)  // setgid: files made here belong to the group
                } else if info.st_mode & 0o077 != 0 {
                    if created || info.st_uid == me { fchmod(fd, 0o700) }
                }
            } else if othersWrite {
                guard sticky && info.st_uid == 0 else {
                    close(fd)
                    throw EngineError("\(walked) is writable by others and not a root-owned sticky directory: anyone could replace what is in it")
                }
                belowShared = true
            } else if group != nil && info.st_uid == me && info.st_mode & 0o011 != 0o011 {
                fchmod(fd, (info.st_mode & 0o7777) | 0o011)  // the group must reach the instance directory
            }
        }
        return fd
    }

    /// Removes the files of the instance directory through its descriptor (a path could have
    /// been swapped for a link meanwhile), then the directory if `path` still names it.
    static func remove(_ fd: Int32, path: String) {
        removeFiles(fd)
        var mine = stat(), there = stat()
        if fstat(fd, &mine) == 0, lstat(path, &there) == 0, there.st_mode & S_IFMT == S_IFDIR,
           mine.st_dev == there.st_dev, mine.st_ino == there.st_ino {
            rmdir(path)
        }
    }

    /// Removes every file of the directory `fd` names, through it.
    static func removeFiles(_ fd: Int32) {
        guard fd >= 0 else { return }
        // A new open file description (not dup: a dup shares the directory offset, and a read
        // to the end would leave the next listing empty).
        let copy = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if copy >= 0, let dir = fdopendir(copy) {
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(dir)
            for name in names { unlinkat(fd, name, 0) }
        } else if copy >= 0 {
            close(copy)
        }
    }
    /// Removes the side directories (`/dev/shm/crossbook-regen-<pid>-<n>`) of regenerations
    /// whose engine is gone (killed during one: nothing else removes them, and tmpfs holds their
    /// rings in memory), and `own`, the one this process is about to use, which can only be a
    /// leftover. Only directories of this user, through descriptors, never following links.
    static func removeDeadRegenerations(own: String) {
        let prefix = "crossbook-regen-"
        let shm = open("/dev/shm", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard shm >= 0 else { return }
        defer { close(shm) }
        let copy = openat(shm, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard copy >= 0, let dir = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            return
        }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(prefix) else { continue }
            let pid = name.dropFirst(prefix.count).split(separator: "-").first.flatMap { Int32($0) } ?? 0
            if "/dev/shm/" + name == own || (pid > 0 && !processIsAlive(pid)) { names.append(name) }
        }
        closedir(dir)
        for name in names {
            let fd = openat(shm, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            var info = stat()
            if fstat(fd, &info) == 0, info.st_uid == geteuid() {
                removeFiles(fd)
                unlinkat(shm, name, AT_REMOVEDIR)
            }
            close(fd)
        }
    }
}
