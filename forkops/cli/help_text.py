"""What ``forkops --help`` prints, kept verbatim so that top-level help needs no typer import.

Regenerate after changing commands: ``python tests/test_cli_help.py > forkops/cli/help_text.py``;
``tests/test_cli_help.py`` fails while this differs from what typer renders.
"""

TOP_HELP = (
    'Usage: forkops [OPTIONS] COMMAND [ARGS]...\n'
    '\n'
    '  Keep private TensorFlow and TensorFlow Serving forks current with upstream.\n'
    '\n'
    'Options:\n'
    '  --version   Show the version and exit.\n'
    '  -C DIR      Run as if forkops was started in DIR (like git -C).\n'
    '  -h, --help  Show this message and exit.\n'
    '\n'
    'Commands:\n'
    '  demo         Run forkops end to end in a generated sandbox: check,...\n'
    "  init         Clone the forks, pick the TensorFlow fork's playbook from...\n"
    "  upgrade      Rebase the fork's patch stack onto an upstream release...\n"
    '  status       What an upgrade in progress is doing and waiting for.\n'
    '  push         Push the branches of a finished upgrade to origin...\n'
    '  check        Predict, without touching any worktree, how each upstream...\n'
    '  nightly      Check every repository against every upstream tag newer...\n'
    '  set-key      Write the key and IV into every key site, verify they...\n'
    "  encrypt      Encrypt a model (every version's saved_model.pb; the rest...\n"
    '  decrypt      Decrypt a model into OUT; a wrong key (bad padding) is...\n'
    '  inspect      Say what each saved_model.pb is (plaintext SavedModel /...\n'
    '  build        Stage the Serving fork with the TensorFlow fork inside...\n'
    '  smoke        Serve the encrypted half_plus_two from IMAGE and check the...\n'
    '  doctor       Check git, the docker client and engine, buildx, the...\n'
    '  gc           Remove the backup refs (refs/forkops/backup/RUN/) and...\n'
    '  guard        The commit/push guard that keeps the model key out of git.\n'
    '  cryptlib     The decryption library (libcryptfile.so) the TensorFlow...\n'
    '  playbook     Show and validate playbooks (built-in or your own TOML...\n'
    '  resolutions  Recorded conflict resolutions (resolutions/<repo>/<id>.txt...\n'
    '  ci           Continuous integration: the nightly GitHub Actions workflow.\n'
    '\n'
    '  Exit codes: 0 done, 1 needs a person, 2 bad input or usage,\n'
    '  3 an external tool failed, 130 interrupted.\n'
)
