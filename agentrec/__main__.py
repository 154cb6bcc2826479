from agentrec.cli.main import main

main()
