// The crossbook command-line tool: the entry point for operators and for `make run`.
import ArgumentParser
import Glibc
import Engine
import SharedMemory

@main
struct Crossbook: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crossbook",
        abstract: "Crossbook, a matching engine for spot exchanges.",
        version: crossbookVersion,
        subcommands: [RunCommand.self, SubmitCommand.self, LoadCommand.self, StatCommand.self, MarketDataCommand.self, Replay.self, WorkloadCommand.self, RingCommand.self, JournalCommand.self, DiskFloorCommand.self, Host.self, MigrateCommand.self, RouteCommand.self, SymbolCommand.self, MigrateBenchCommand.self, RebalanceCommand.self, PromoteCommand.self, ReplicationCommand.self, SwitchoverCommand.self, FailoverDrillCommand.self]
    )
}

/// A failure at run time (a file, a config): printed as one line, without the usage text that
/// ArgumentParser adds for mistakes on the command line.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A failure with its own exit status: the message on standard error as ArgumentParser writes
/// one ("Error: ..."), then that status.
func failure(_ message: String, status: Int32) -> ExitCode {
    let line = Array("Error: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    return ExitCode(status)
}

/// Which running engine a command talks to.
struct InstanceOptions: ParsableArguments {
    @Option(help: "Instance name (default: $CROSSBOOK_INSTANCE, else 'default').")
    var instance: String = environmentInstance ?? "default"

    @Option(help: "Directory of the instance (default /dev/shm/crossbook-<uid>/<instance>).")
    var directory: String?

    var resolvedDirectory: String { directory ?? InstanceLayout.defaultDirectory(instance) }
}

/// The instance named by the environment (CROSSBOOK_INSTANCE), if any.
let environmentInstance: String? = {
    guard let value = getenv("CROSSBOOK_INSTANCE") else { return nil }
    let text = String(cString: value)
    return text.isEmpty ? nil : text
}()
