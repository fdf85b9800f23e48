from pipecat_workers_cli.main import main

main(prog_name="workers")
