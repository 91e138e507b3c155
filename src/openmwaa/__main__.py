from openmwaa.cli import main

main()
