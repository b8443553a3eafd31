// The [plugins] section of `crossbook run --config`, and plugin health in `crossbook stat`.
import Foundation
import Glibc
import Testing
import TestSupport

@Suite("plugins from the command line", .serialized)
struct PluginCLITests {
    @Test("[plugins] in the config loads a plugin; crossbook stat shows its state, health and counters")
    func configAndStat() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let orders = folder + "/orders.csv"
        try "N,BTC-USD,1,7,B,LMT,100,1,GTC\nN,BTC-USD,2,7,S,LMT,100,1,GTC\nthis is not an order\n"
            .write(toFile: orders, atomically: true, encoding: .utf8)
        let config = folder + "/crossbook.toml"
        try """
            [[symbols]]
            name = "BTC-USD"

            [plugins]
            dir = "\(buildDirectory)"

            [[plugins.load]]
            name = "template-swift"
            config = { path = "\(orders)" }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let dir = testDirectory()
        let engine = Process()
        engine.executableURL = URL(fileURLWithPath: buildDirectory + "/crossbook")
        engine.arguments = ["run", "--config", config, "--instance", "cli", "--directory", dir, "--no-pin",
                            "--durability", "none"]
        let errors = Pipe()
        engine.standardError = errors
        try engine.run()
        defer {
            if engine.isRunning { kill(engine.processIdentifier, SIGINT) }
            engine.waitUntilExit()
        }
        var stat = ""
        let healthy = waitFor(10) {
            stat = (try? run(buildDirectory + "/crossbook", ["stat", "--instance", "cli", "--directory", dir,
                                                             "--count", "1", "--interval", "0.2"]).output) ?? ""
            return stat.contains("health degraded")
        }
        #expect(healthy, "\(stat)")
        #expect(stat.contains("plugin template-swift 1.0.0 [ingress]: running health degraded (read all of \(orders): 2 submitted, 1 bad lines)"),
                "\(stat)")
        #expect(stat.contains("template_swift_submitted=2"), "\(stat)")
        #expect(stat.contains("template_swift_trades=2"), "\(stat)")
        kill(engine.processIdentifier, SIGINT)
        engine.waitUntilExit()
        let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("plugin template-swift: stopped"), "\(log)")
        #expect(engine.terminationStatus == 0)
    }

    @Test("a bad [plugins] section is refused with the file, the place and the cause", arguments: [
        ("[plugins]\nfoo = 1\n", "[plugins]: unknown key 'foo' (expected dir, load)"),
        ("[[plugins.load]]\nfile = \"x.so\"\n", "[[plugins.load]] #1: name (a string of a-z, 0-9, '-', '_') is required"),
        ("[[plugins.load]]\nname = \"a\"\noptional = \"yes\"\n", "[[plugins.load]] #1: optional must be true or false"),
        ("[[plugins.load]]\nname = \"a\"\nconfig = 3\n", "[[plugins.load]] #1: config must be a table"),
        ("[[plugins.load]]\nname = \"a\"\n[[plugins.load]]\nname = \"a\"\n", "[[plugins.load]] #2: plugin a is named twice"),
    ])
    func badSection(_ text: String, _ message: String) throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        try text.write(toFile: folder + "/bad.toml", atomically: true, encoding: .utf8)
        let (status, output) = try run(buildDirectory + "/crossbook", ["run", "--config", folder + "/bad.toml",
                                                                       "--instance", "bad", "--directory", testDirectory()])
        #expect(status != 0)
        #expect(output.contains(message), "\(output)")
    }

    @Test("a required plugin that cannot load stops the start with one line naming it")
    func requiredPluginMissing() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        try "[plugins]\ndir = \"\(folder)\"\n[[plugins.load]]\nname = \"absent\"\n"
            .write(toFile: folder + "/c.toml", atomically: true, encoding: .utf8)
        let dir = testDirectory()
        let (status, output) = try run(buildDirectory + "/crossbook", ["run", "--config", folder + "/c.toml",
                                                                       "--instance", "absent", "--directory", dir,
                                                                       "--durability", "none", "--no-pin"])
        #expect(status != 0)
        #expect(output.contains("plugin absent: missing file: \(folder)/libcrossbook-absent.so: No such file or directory"),
                "\(output)")
        #expect(access(dir, F_OK) != 0 || access(dir + "/engine", F_OK) != 0)
    }
}
