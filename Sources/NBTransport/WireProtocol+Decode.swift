import Foundation
import NBVocabulary

extension WireProtocol {
    /// Decodes and strictly checks one received message (frame 0 the header, then one frame per tensor).
    ///
    /// Refuses, with a ``WireProtocolError`` naming the rule: a version other than 1, an unknown type, a
    /// missing or mistyped field, out-of-range values, a frame count other than 1 + tensors, and a tensor frame
    /// whose length is not `prod(shape) * itemsize`. Unknown header keys are ignored (later v1 senders may
    /// add keys; anything incompatible raises the version).
    public static func decode(_ frames: [[UInt8]]) throws(WireProtocolError) -> Message {
        guard let first = frames.first else { throw .emptyMessage }
        let header = try decodeHeader(first)
        let payloads = Array(frames.dropFirst())
        try validate(header, payloadByteCounts: payloads.map(\.count))
        return Message(header: header, payloads: payloads)
    }

    /// Decodes frame 0 alone; checks the header's own fields but not the frames that should follow it.
    public static func decodeHeader(_ frame: [UInt8]) throws(WireProtocolError) -> Header {
        let object = try parseObject(frame)
        guard let version = object["v"] else { throw .missingField(type: "header", field: "v") }
        guard version.intValue == WireProtocol.version, case .int = version else {
            throw .unsupportedVersion(found: version.description)
        }
        guard let typeValue = object["type"] else { throw .missingField(type: "header", field: "type") }
        guard let type = typeValue.stringValue else { throw .unknownMessageType(typeValue.description) }

        let fields = Fields(type: type, object: object)
        let header: Header
        switch type {
        case "batch":
            header = .batch(BatchHeader(
                stream: try fields.int("stream"), stage: try fields.stage(), epoch: try fields.int("epoch"), batch: try fields.int("batch"),
                frameIndex: try fields.int("frame_index"), sequences: try fields.ints("sequences"),
                orientations: try fields.ints("orientations"), rank: try fields.int("rank"),
                worldSize: try fields.int("world_size"), tensors: try fields.tensors()))
        case "lease":
            let batch = BatchHeader(
                stream: try fields.int("stream"), stage: try fields.stage(), epoch: try fields.int("epoch"), batch: try fields.int("batch"),
                frameIndex: try fields.int("frame_index"), sequences: try fields.ints("sequences"),
                orientations: try fields.ints("orientations"), rank: try fields.int("rank"),
                worldSize: try fields.int("world_size"), tensors: [])
            header = .lease(LeaseHeader(batch: batch, lease: try fields.int("lease"), tensors: try fields.sharedTensors()))
        case "end":
            header = .end(EndHeader(stream: try fields.int("stream"), stage: try fields.stage(), epoch: try fields.int("epoch"), batches: try fields.int("batches")))
        case "error":
            header = .error(ErrorHeader(
                stream: try fields.int("stream"), stage: try fields.stage(), epoch: try fields.int("epoch"), batch: try fields.int("batch"),
                file: try fields.optionalString("file"), array: try fields.optionalString("array"),
                chunk: try fields.optionalString("chunk"), reason: try fields.string("reason")))
        default:
            throw .unknownMessageType(JSONValue.string(type).description)
        }
        return header
    }

    private static func parseObject(_ frame: [UInt8]) throws(WireProtocolError) -> [String: JSONValue] {
        guard String(validating: frame, as: UTF8.self) != nil else { throw .malformedHeader(reason: "not valid UTF-8") }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(frame))
        } catch {
            throw .malformedHeader(reason: "not JSON (\(frame.count) bytes)")
        }
        guard case .object(let object) = value else { throw .malformedHeader(reason: "JSON \(value) is not an object") }
        return object
    }

    /// Typed access to one header's fields, with errors naming the message type and the field.
    private struct Fields {
        let type: String
        let object: [String: JSONValue]

        func value(_ field: String) throws(WireProtocolError) -> JSONValue {
            guard let value = object[field] else { throw .missingField(type: type, field: field) }
            return value
        }

        func int(_ field: String) throws(WireProtocolError) -> Int {
            let value = try value(field)
            guard let number = Self.integer(value) else {
                throw .invalidField(type: type, field: field, reason: "\(value) is not an integer")
            }
            return number
        }

        func ints(_ field: String) throws(WireProtocolError) -> [Int] {
            let value = try value(field)
            guard case .array(let elements) = value else {
                throw .invalidField(type: type, field: field, reason: "\(value) is not an array")
            }
            var numbers: [Int] = []
            for element in elements {
                guard let number = Self.integer(element) else {
                    throw .invalidField(type: type, field: field, reason: "\(element) is not an integer")
                }
                numbers.append(number)
            }
            return numbers
        }

        func string(_ field: String) throws(WireProtocolError) -> String {
            let value = try value(field)
            guard let text = value.stringValue else {
                throw .invalidField(type: type, field: field, reason: "\(value) is not a string")
            }
            return text
        }

        func optionalString(_ field: String) throws(WireProtocolError) -> String? {
            let value = try value(field)
            if value == .null { return nil }
            guard let text = value.stringValue else {
                throw .invalidField(type: type, field: field, reason: "\(value) is neither a string nor null")
            }
            return text
        }

        func stage() throws(WireProtocolError) -> Stage {
            let text = try string("stage")
            guard let stage = Stage(rawValue: text) else {
                throw .invalidField(type: type, field: "stage", reason: "'\(text)' is neither 'train' nor 'val'")
            }
            return stage
        }

        /// A lease's tensors: each a tensor object with an `offset` into the shared memory.
        func sharedTensors() throws(WireProtocolError) -> [SharedTensor] {
            let specs = try tensors()
            guard case .array(let entries) = try value("tensors") else { return [] }
            var shared: [SharedTensor] = []
            for (index, (spec, entry)) in zip(specs, entries).enumerated() {
                guard case .object(let members) = entry, let offset = members["offset"] else {
                    throw .missingField(type: type, field: "tensors[\(index)].offset")
                }
                guard let number = Self.integer(offset) else {
                    throw .invalidField(type: type, field: "tensors[\(index)].offset", reason: "\(offset) is not an integer")
                }
                shared.append(SharedTensor(spec: spec, offset: number))
            }
            return shared
        }

        func tensors() throws(WireProtocolError) -> [TensorSpec] {
            let value = try value("tensors")
            guard case .array(let entries) = value else {
                throw .invalidField(type: type, field: "tensors", reason: "\(value) is not an array")
            }
            var specs: [TensorSpec] = []
            for (index, entry) in entries.enumerated() {
                guard case .object(let members) = entry else {
                    throw .invalidField(type: type, field: "tensors[\(index)]", reason: "\(entry) is not an object")
                }
                let fields = Fields(type: type, object: members)
                let prefix = "tensors[\(index)]."
                let name: String, dtype: String, shape: [Int]
                do throws(WireProtocolError) {
                    name = try fields.string("name")
                    dtype = try fields.string("dtype")
                    shape = try fields.ints("shape")
                } catch {
                    throw Self.prefixed(error, prefix)
                }
                // Only the canonical little-endian spelling NumPy itself prints (`dtype.str`) is accepted, so
                // every reader can compare typestrs as strings.
                guard let dataType = DataType(typestr: dtype), dataType.littleEndianTypestr == dtype else {
                    throw .invalidField(
                        type: type, field: prefix + "dtype",
                        reason: "'\(dtype)' is not a little-endian bool, integer or float typestr such as '<f4' or '|u1'")
                }
                specs.append(TensorSpec(name: name, dataType: dataType, shape: shape))
            }
            return specs
        }

        /// An exact JSON integer (never a fraction, a bool or a string).
        private static func integer(_ value: JSONValue) -> Int? {
            switch value {
            case .int, .uint: value.intValue
            default: nil
            }
        }

        private static func prefixed(_ error: WireProtocolError, _ prefix: String) -> WireProtocolError {
            switch error {
            case .missingField(let type, let field): .missingField(type: type, field: prefix + field)
            case .invalidField(let type, let field, let reason): .invalidField(type: type, field: prefix + field, reason: reason)
            default: error
            }
        }
    }
}
