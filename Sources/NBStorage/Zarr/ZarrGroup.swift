import Foundation
import Glibc
import NBVocabulary

/// A Zarr v2 group opened from a ZIP file or a directory, with its arrays found by their `.zarray` keys.
/// Arrays in nested groups are named by their path, e.g. `sub/array`.
public final class ZarrGroup {
    public let store: any ZarrStore
    /// Every array in the group and its subgroups, sorted.
    public let arrayNames: [String]
    private var opened: [String: ZarrArray] = [:]

    public var path: String { store.path }

    /// Opens `path`: a directory is read as a `DirectoryStore`, anything else as a `ZipStore` archive.
    public convenience init(path: String) throws(ZarrError) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw .store(file: path, reason: "cannot open: \(String(cString: strerror(errno)))")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            try self.init(store: DirectoryStore(path: path))
        } else {
            do {
                try self.init(store: ZipArchive(path: path))
            } catch let error as ZipError {
                throw .store(file: path, reason: Self.stripFile(error.description, path))
            } catch let error as ZarrError {
                throw error
            } catch {
                throw .store(file: path, reason: "\(error)")
            }
        }
    }

    public init(store: any ZarrStore) throws(ZarrError) {
        self.store = store
        let keys: [String]
        do { keys = try store.allKeys() } catch { throw .store(file: store.path, reason: "\(error)") }
        var names: [String] = []
        var hasGroup = false
        for key in keys {
            if key == ".zgroup" { hasGroup = true }
            if key == ".zarray" { names.append("") } else if key.hasSuffix("/.zarray") { names.append(String(key.dropLast(8))) }
        }
        guard hasGroup || !names.isEmpty else { throw .notAGroup(file: store.path) }
        if hasGroup { try Self.checkGroupMetadata(store) }
        arrayNames = names.sorted()
    }

    /// `.zgroup` must be a JSON object with `"zarr_format": 2`, as zarr-python requires.
    private static func checkGroupMetadata(_ store: any ZarrStore) throws(ZarrError) {
        struct GroupMetadata: Decodable { let zarr_format: Int }
        let format: Int?
        do {
            format = try store.withContents(of: ".zgroup", verifyChecksum: true) { bytes in
                try JSONDecoder().decode(GroupMetadata.self, from: Data(bytes)).zarr_format
            }
        } catch let error as ZipError {
            throw .store(file: store.path, reason: stripFile(error.description, store.path))
        } catch {
            throw .store(file: store.path, reason: "invalid .zgroup (not a JSON object with zarr_format): \(error)")
        }
        guard format == 2 else {
            throw .store(file: store.path, reason: "unsupported .zgroup zarr_format \(format.map(String.init) ?? "missing") (only Zarr v2 is read)")
        }
    }

    /// The array at `name`, opened once and cached.
    public func array(_ name: String) throws(ZarrError) -> ZarrArray {
        if let array = opened[name] { return array }
        let metadataKey = name.isEmpty ? ".zarray" : name + "/.zarray"
        let parsed: (ArrayMetadata, [UInt8])?
        do {
            parsed = try store.withContents(of: metadataKey, verifyChecksum: true) { bytes in
                (try ArrayMetadata(json: bytes, file: store.path, array: name), Array(bytes))
            }
        } catch let error as ZarrError {
            throw error
        } catch let error as ZipError {
            throw .invalidMetadata(file: store.path, array: name, reason: Self.stripFile(error.description, store.path))
        } catch {
            throw .invalidMetadata(file: store.path, array: name, reason: "\(error)")
        }
        guard let (metadata, text) = parsed else {
            throw .missingArray(file: store.path, array: name, available: arrayNames)
        }
        let array = try ZarrArray(name: name, metadata: metadata, metadataText: text, store: store)
        opened[name] = array
        return array
    }

    /// Error texts from lower layers start with the file path; ours add it again, once.
    /// (Lower layers print the path escaped, as `displayText` does.)
    private static func stripFile(_ text: String, _ path: String) -> String {
        let shown = displayText(path) + ": "
        return text.hasPrefix(shown) ? String(text.dropFirst(shown.count)) : text
    }
}
