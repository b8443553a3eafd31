// `crossbook promote` and `crossbook replication`: a standby made primary, and where
// replication stands (through the engine's control socket).
import ArgumentParser
import Engine

struct PromoteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Make the running standby the primary (a manual failover).",
        discussion: "The standby stops following, applies and journals everything it received, journals the new epoch (one above every epoch it has seen, or --epoch), then takes orders, starts its plugins and serves standbys. Make sure the old primary is stopped first: without a lease nothing else stops it acknowledging (README, \"Hot standby\"). Exit status 1 if the engine is not a standby or refused.")

    @OptionGroup var target: InstanceOptions

    @Option(help: "The epoch to journal (default: one above every epoch this standby has seen).")
    var epoch: UInt64?

    func run() throws {
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, epoch.map { "promote \($0)" } ?? "promote", timeout: 60) } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first.map { String($0.dropFirst(6)) } ?? "no answer") }
        for line in answer.dropFirst() { print(line) }
    }
}

struct ReplicationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replication",
        abstract: "The engine's role, epoch, standbys (with their lag) or primary, and the digests compared.")

    @OptionGroup var target: InstanceOptions

    func run() throws {
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, "replication") } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first ?? "no answer") }
        for line in answer.dropFirst() { print(line) }
    }
}

struct SwitchoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchover",
        abstract: "A planned switchover, run against the primary: it stops taking orders, waits for its standby to confirm everything, hands over, and comes back as the new primary's standby.",
        discussion: "Clients then connect to the new primary. Exit status 1 if it was refused or timed out (the orders then flow on the old primary again).")

    @OptionGroup var target: InstanceOptions

    func run() throws {
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, "switchover", timeout: 30) } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first.map { String($0.dropFirst(6)) } ?? "no answer") }
        for line in answer.dropFirst() { print(line) }
    }
}
