import XCTest
@testable import NBLoader

/// Config parsing: noisebase's keys and defaults, and errors that name the key.
final class ConfigTests: XCTestCase {
    private let source = """
        src:
          sequences: 10
          files: scene{index:04d}.zip
          frames_per_sequence: 4
          crop: 16
          samples: 8
          rendering_height: 60
          rendering_width: 80
        """

    private func parse(_ text: String) throws -> LoaderConfig {
        try LoaderConfig.parse(yaml: text, file: "test.yaml", baseDirectory: "/base")
    }

    private func assertError(_ text: String, key: String, _ fragment: String, line: UInt = #line) {
        XCTAssertThrowsError(try parse(text), line: line) { error in
            guard let error = error as? ConfigError else { return XCTFail("\(error)", line: line) }
            XCTAssertEqual(error.key, key, line: line)
            XCTAssertTrue(error.description.contains(fragment), "\(error)", line: line)
            XCTAssertTrue(error.description.hasPrefix("test.yaml: \(key):"), "\(error)", line: line)
        }
    }

    func testNoisebaseDefaultsAndIgnoredKeys() throws {
        let config = try parse(source + """

            name: "Sample Set v1"
            framework: torch
            data_remote: https://example.invalid/data/
            defaults: [./format/training_sample_v1@_here_, _self_]
            _target_: ${.loaders[${.framework}]}
            loaders: {torch: noisebase.loaders.torch.TrainingSampleLoader_v1}
            sampler_state: {get_epoch: null}
            data_path: data
            """)
        XCTAssertEqual(config.buffers, BufferName.allCases)
        XCTAssertEqual(config.samples, 8)
        XCTAssertEqual(config.batchSize, 8)
        XCTAssertEqual(config.seed, 42)
        XCTAssertEqual(config.valSplit, 0.05)
        XCTAssertTrue(config.flipRotate && config.shuffle && config.dropLast)
        XCTAssertEqual(config.stage, .train)
        XCTAssertEqual(config.sequencePath(7), "/base/data/scene0007.zip")
    }

    func testFileTemplates() throws {
        XCTAssertEqual(try FileNameTemplate("a/scene{index:04d}.zip").name(index: 12), "a/scene0012.zip")
        XCTAssertEqual(try FileNameTemplate("{index}").name(index: 12345), "12345")
        XCTAssertEqual(try FileNameTemplate("{index:5}_{{x}}").name(index: 3), "    3_{x}")
        XCTAssertThrowsError(try FileNameTemplate("{scene}"))
        XCTAssertThrowsError(try FileNameTemplate("{index:x}"))
        XCTAssertThrowsError(try FileNameTemplate("{index"))
    }

    func testErrorsNameTheKey() {
        assertError(source + "\nbogus: 1", key: "bogus", "unknown key")
        assertError(source + "\nbuffers: [color, albedo]", key: "buffers[1]", "unknown buffer 'albedo'")
        assertError(source + "\nsamples: 9", key: "samples", "more than the 8 stored")
        assertError(source + "\nbatch_size: two", key: "batch_size", "must be an integer")
        assertError(source + "\nshuffle: 3", key: "shuffle", "must be true or false")
        assertError(source + "\nstage: test", key: "stage", "is not train, val or validation")
        assertError(source + "\nval_split: 1.5", key: "val_split", "between 0 and 1")
        assertError(source + "\nserve: {rank: 1}", key: "serve.rank", "unknown key")
        assertError(source + "\nserve: {world_size: 2, ranks: [2]}", key: "serve.ranks", "not below serve.world_size 2")
        assertError(source.replacingOccurrences(of: "crop: 16", with: "crop: 100"), key: "src.crop", "larger than")
        assertError(source.replacingOccurrences(of: "  sequences: 10\n", with: ""), key: "src.sequences", "missing")
        assertError("data_path: x", key: "src", "missing")
    }

    func testTrustKeys() throws {
        let config = try parse(source + """

            serve:
              socket_mode: 0660
              control_mode: "0600"
              socket_group: trainers
              secret_key_file: /etc/nb-serve/server.key_secret
              authorized_keys: /etc/nb-serve/clients
              allow_unauthenticated_network: false
            """)
        XCTAssertEqual(config.serve.socketMode, 0o660)
        XCTAssertEqual(config.serve.controlMode, 0o600)
        XCTAssertEqual(config.serve.socketGroup, "trainers")
        XCTAssertEqual(config.serve.secretKeyFile, "/etc/nb-serve/server.key_secret")
        XCTAssertEqual(config.serve.authorizedKeys, "/etc/nb-serve/clients")
        XCTAssertFalse(config.serve.allowUnauthenticatedNetwork)
        let defaults = try parse(source)
        XCTAssertEqual(defaults.serve.socketMode, 0o600)
        XCTAssertNil(defaults.serve.controlMode)
        XCTAssertNil(defaults.serve.secretKeyFile)

        assertError(source + "\nserve: {socket_mode: \"0999\"}", key: "serve.socket_mode", "not an octal file mode")
        assertError(source + "\nserve: {socket_mode: [1]}", key: "serve.socket_mode", "must be a string")
        assertError(source + "\nserve: {socket_group: \"\"}", key: "serve.socket_group", "is empty")
        assertError(source + "\nserve: {allow_unauthenticated_network: 1}", key: "serve.allow_unauthenticated_network", "must be true or false")
        assertError(source + "\nserve: {allow_unauthenticated_network: yes please}", key: "serve.allow_unauthenticated_network", "must be true or false")
        assertError(source + "\nserve: {authorized_keys: /x}", key: "serve.authorized_keys", "needs serve.secret_key_file")
        assertError(source + "\nserve: {secret_key_file: /x}", key: "serve.secret_key_file", "needs serve.authorized_keys")
        assertError(source + "\nserve: {secret_key: /x}", key: "serve.secret_key", "unknown key")
    }

    func testBatchSizeMustDivideByWorldSize() throws {
        let config = try parse(source + "\nbatch_size: 4")
        XCTAssertThrowsError(try VideoSampler(config: config, stage: .train, rank: 0, worldSize: 3)) { error in
            XCTAssertEqual((error as? ConfigError)?.key, "batch_size")
        }
        XCTAssertNoThrow(try VideoSampler(config: config, stage: .train, rank: 1, worldSize: 2))
    }
}
