// The crossbook command-line tool: the entry point for operators and for `make run`.
import ArgumentParser

@main
struct Crossbook: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crossbook",
        abstract: "Crossbook, a matching engine for spot exchanges.",
        subcommands: [Replay.self, WorkloadCommand.self, Host.self]
    )
}
