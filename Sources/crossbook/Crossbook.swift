// The crossbook command-line tool: the entry point for operators and for `make run`.
import ArgumentParser
import Engine
import SharedMemory

@main
struct Crossbook: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crossbook",
        abstract: "Crossbook, a matching engine for spot exchanges.",
        version: crossbookVersion,
        subcommands: [RunCommand.self, SubmitCommand.self, LoadCommand.self, StatCommand.self, MarketDataCommand.self, Replay.self, WorkloadCommand.self, RingCommand.self, JournalCommand.self, DiskFloorCommand.self, Host.self, MigrateCommand.self, RouteCommand.self, MigrateBenchCommand.self, RebalanceCommand.self]
    )
}

/// A failure at run time (a file, a config): printed as one line, without the usage text that
/// ArgumentParser adds for mistakes on the command line.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Which running engine a command talks to.
struct InstanceOptions: ParsableArguments {
    @Option(help: "Instance name.")
    var instance: String = "default"

    @Option(help: "Directory of the instance (default /dev/shm/crossbook-<uid>/<instance>).")
    var directory: String?

    var resolvedDirectory: String { directory ?? InstanceLayout.defaultDirectory(instance) }
}
