// swift-tools-version:6.0
import Foundation
import PackageDescription

// The hot code targets x86-64 CPUs with AVX2/FMA/F16C (every x86 server since 2013); set
// NB_SERVE_GENERIC_CPU=1 to build for any x86-64. Neither Swift nor the kernels (built with
// -ffp-contract=off) ever contract a*b+c into an FMA, so results are identical either way.
let genericCPU = ProcessInfo.processInfo.environment["NB_SERVE_GENERIC_CPU"] != nil
#if arch(x86_64)
let tuning: [SwiftSetting] = genericCPU ? [] : [.unsafeFlags(["-target-cpu", "haswell"], .when(configuration: .release))]
let kernelArchitecture: [String] = genericCPU ? [] : ["-march=haswell"]
#else
let tuning: [SwiftSetting] = []
let kernelArchitecture: [String] = []
#endif
// The decode kernels are always optimised, debug builds included, so the tests exercise the very code
// that release builds run.
let kernelFlags: [CSetting] = [.unsafeFlags(["-O2", "-ffp-contract=off"] + kernelArchitecture)]

// Layers, lowest first: C shims (system libraries via pkg-config) → NBStorage (ZIP, Zarr v2, codecs)
// → NBLoader (noisebase's loader semantics) → the `nb-serve` command line. A lower layer never imports a higher one.
let package = Package(
    name: "nb-serve",
    products: [
        .executable(name: "nb-serve", targets: ["NBServeCLI"]),
        .library(name: "NBStorage", targets: ["NBStorage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .systemLibrary(name: "CZmq", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CBlosc", pkgConfig: "blosc", providers: [.apt(["libblosc-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // The vocabulary every layer shares: element types, JSON values, stages.
        .target(name: "NBVocabulary"),
        // The system-call layer: one error type, EINTR-safe calls, whole reads and writes, wait statuses.
        .target(name: "NBSystem", dependencies: ["NBVocabulary", "CNBSystem"]),
        .target(
            name: "NBStorage",
            dependencies: ["NBVocabulary", "NBSystem", "CZstd", "CBlosc", "CLZ4", "CZlib"],
            swiftSettings: tuning
        ),
        .target(name: "CSIMDMath"),
        // Per-pixel decode loops (C vector extensions): oriented copies, normals, depth, motion, RGBE.
        .target(name: "CDecodeKernels", dependencies: ["CSIMDMath"], cSettings: kernelFlags),
        // The native demo-dataset writer (`nb-serve demo`) and its always-optimised ray-casting kernels.
        .target(name: "CDemoKernels", cSettings: kernelFlags),
        .target(name: "NBDemo", dependencies: ["NBVocabulary", "NBStorage", "CDemoKernels"]),
        .target(
            name: "NBLoader",
            dependencies: ["NBVocabulary", "NBStorage", "CDecodeKernels", .product(name: "Yams", package: "Yams")],
            swiftSettings: tuning
        ),
        // The ZeroMQ transport and wire protocol v1: sockets, poller, zero-copy sends, sd_notify.
        .target(name: "NBTransport", dependencies: ["CZmq", "NBVocabulary"]),
        // The Prometheus endpoint: swift-prometheus' registry and text format, served over HTTP by swift-nio.
        .target(
            name: "NBMetrics",
            dependencies: [
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The daemon: worker processes, shared batch memory, rank streams, control, resume state.
        .target(name: "CNBSystem"),
        // Test builds (debug) compile in the fault hooks the process tests inject (TestHooks.swift).
        .target(
            name: "NBDaemon",
            dependencies: [
                "NBVocabulary", "NBSystem", "NBLoader", "NBStorage", "NBTransport", "NBMetrics", "CNBSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: [.define("NB_SERVE_TEST_HOOKS", .when(configuration: .debug))]
        ),
        // The trainer's side in Swift (demo, bench, ctl): control requests, data sockets, shared-memory sessions.
        .target(name: "NBClient", dependencies: ["NBVocabulary", "NBSystem", "NBTransport", "CNBSystem"]),
        .executableTarget(
            name: "NBServeCLI",
            dependencies: [
                "NBStorage",
                "NBLoader",
                "NBVocabulary",
                "NBSystem",
                "NBTransport",
                "NBClient",
                "NBDaemon",
                "NBDemo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "NBTestSupport", path: "Tests/NBTestSupport"),
        .testTarget(name: "NBStorageTests", dependencies: ["NBVocabulary", "NBStorage", "NBTestSupport"]),
        .testTarget(name: "NBLoaderTests", dependencies: ["NBLoader", "CDecodeKernels", "NBTestSupport"]),
        .testTarget(name: "NBTransportTests", dependencies: ["NBVocabulary", "NBTransport", "NBTestSupport"]),
        .testTarget(name: "NBDemoTests", dependencies: ["NBDemo", "CDemoKernels", "NBStorage", "NBTestSupport"]),
        .testTarget(name: "NBDaemonTests", dependencies: ["NBVocabulary", "NBSystem", "NBDaemon", "NBLoader", "NBStorage", "NBTransport"]),
    ]
)
