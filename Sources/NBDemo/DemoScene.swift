import CDemoKernels
import Foundation

/// The demo's random stream: xoshiro256** from the C kernels, one stream per sequence.
struct DemoRandom {
    var state = nbdemo_rng()

    init(seed: UInt64, stream: UInt64) { nbdemo_rng_seed(&state, seed, stream) }

    mutating func uniform() -> Double { nbdemo_rng_uniform(&state) }
    mutating func uniform(_ low: Double, _ high: Double) -> Double { low + (high - low) * uniform() }
    /// Uniform integer in `range` (inclusive).
    mutating func integer(_ range: ClosedRange<Int>) -> Int {
        min(range.upperBound, range.lowerBound + Int(uniform() * Double(range.count)))
    }
    mutating func sign() -> Double { uniform() < 0.5 ? -1 : 1 }
}

/// One sequence's world: a checkered ground plane with a few static spheres under a sun and a sky
/// gradient, seen by a camera that orbits a focus point.
struct DemoScene {
    var geometry = nbdemo_scene()
    var focus: SIMD3<Double>
    var orbitRadius: Double
    var orbitStart: Double
    /// Radians per frame.
    var orbitSpeed: Double
    var cameraHeight: Double
    var bob: Double
    /// Camera roll, radians.
    var tilt: Double
    var fovy: Double

    init(random: inout DemoRandom) {
        let count = random.integer(3...5)
        var placed: [(SIMD3<Double>, Double)] = []
        // Spheres stay within 4 of the vertical axis and the camera at least 8.5 away from it: the camera
        // is never inside a sphere.
        while placed.count < count {
            let radius = random.uniform(0.35, 1.1)
            let x = random.uniform(-4, 4), z = random.uniform(-4, 4)
            guard (x * x + z * z).squareRoot() <= 4 else { continue }
            let lift = random.uniform() < 0.25 ? random.uniform(0.2, 1.0) : 0
            let centre = SIMD3(x, radius + lift, z)
            if placed.contains(where: { ($0.0 - centre).length < $0.1 + radius + 0.1 }) { continue }
            placed.append((centre, radius))
        }
        geometry.sphere_count = Int32(count)
        withUnsafeMutableBytes(of: &geometry.centre) { raw in
            let centres = raw.bindMemory(to: Double.self)
            for (i, sphere) in placed.enumerated() { for c in 0..<3 { centres[3 * i + c] = sphere.0[c] } }
        }
        withUnsafeMutableBytes(of: &geometry.radius) { raw in
            for (i, sphere) in placed.enumerated() { raw.bindMemory(to: Double.self)[i] = sphere.1 }
        }
        withUnsafeMutableBytes(of: &geometry.albedo) { raw in
            for i in 0..<(3 * count) { raw.bindMemory(to: Double.self)[i] = random.uniform(0.15, 0.85) }
        }
        withUnsafeMutableBytes(of: &geometry.striped) { raw in
            for i in 0..<count { raw.bindMemory(to: Int32.self)[i] = random.uniform() < 0.5 ? 1 : 0 }
        }
        geometry.ground_a = (random.uniform(0.5, 0.8), random.uniform(0.5, 0.8), random.uniform(0.5, 0.8))
        geometry.ground_b = (random.uniform(0.1, 0.3), random.uniform(0.1, 0.3), random.uniform(0.1, 0.3))
        geometry.checker = random.uniform(0.6, 1.2)
        let elevation = random.uniform(20, 60) * .pi / 180
        let azimuth = random.uniform(0, 2 * .pi)
        geometry.sun_direction = (cos(elevation) * cos(azimuth), sin(elevation), cos(elevation) * sin(azimuth))
        let sun = random.uniform(2, 4)
        geometry.sun_irradiance = (sun, sun * 0.93, sun * 0.82)
        let horizon = random.uniform(0.6, 1.0), zenith = random.uniform(0.4, 0.8)
        geometry.sky_horizon = (0.75 * horizon, 0.85 * horizon, horizon)
        geometry.sky_zenith = (0.25 * zenith, 0.45 * zenith, 0.9 * zenith)

        // A camera barely above the focus sees the horizon (and sky) across the middle of the frame.
        focus = SIMD3(random.uniform(-0.5, 0.5), random.uniform(0.8, 1.6), random.uniform(-0.5, 0.5))
        orbitRadius = random.uniform(8.5, 11)
        orbitStart = random.uniform(0, 2 * .pi)
        orbitSpeed = random.uniform(0.01, 0.035) * random.sign()
        cameraHeight = random.uniform(0.8, 2.0)
        bob = random.uniform(0, 0.3)
        tilt = random.uniform(-0.08, 0.08)
        fovy = random.uniform(45, 70) * .pi / 180
    }

    /// Sphere centres, for choosing a first crop.
    var sphereCentres: [SIMD3<Double>] {
        withUnsafeBytes(of: geometry.centre) { raw in
            let values = raw.bindMemory(to: Double.self)
            return (0..<Int(geometry.sphere_count)).map { SIMD3(values[3 * $0], values[3 * $0 + 1], values[3 * $0 + 2]) }
        }
    }

    /// The camera's (position, target, up) at time `t` in frames.
    func camera(at t: Double) -> (position: SIMD3<Double>, target: SIMD3<Double>, up: SIMD3<Double>) {
        let angle = orbitStart + orbitSpeed * t
        let position = focus + SIMD3(orbitRadius * cos(angle), cameraHeight + bob * sin(0.35 * t), orbitRadius * sin(angle))
        let forward = (focus - position).normalized
        let worldUp = SIMD3<Double>(0, 1, 0)
        let side = forward.cross(worldUp).normalized
        return (position, focus, cos(tilt) * worldUp + sin(tilt) * side)
    }
}

extension SIMD3 where Scalar: FloatingPoint {
    var length: Scalar { (self * self).sum().squareRoot() }
    var normalized: Self { self / length }
    func cross(_ other: Self) -> Self {
        SIMD3(y * other.z - z * other.y, z * other.x - x * other.z, x * other.y - y * other.x)
    }
}
