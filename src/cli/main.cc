#include <iostream>

#include "cli/commands.h"
#include "elephant/error.h"

// Exit codes: 0 success, 2 bad usage (flags, values), 1 any other error. Errors are one line on stderr.
int main(int argc, char** argv) {
  CLI::App app{"elephant: fast inference for Mixture-of-Experts translation models"};
  app.require_subcommand(1);
  const std::pair<const char*, elephant::cli::Runner> commands[] = {
      {"translate", elephant::cli::add_translate_command(app)},
      {"inspect", elephant::cli::add_inspect_command(app)},
      {"quantize", elephant::cli::add_quantize_command(app)},
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "elephant: " << e.what() << " (run elephant --help)\n";
    return 2;
  }
  try {
    for (const auto& [name, run] : commands)
      if (app.got_subcommand(name)) return run();
    return 2;  // require_subcommand(1) makes this unreachable
  } catch (const elephant::UsageError& e) {
    std::cerr << "elephant: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "elephant: " << e.what() << '\n';
    return 1;
  }
}
