from quasar.cli import main

main()
